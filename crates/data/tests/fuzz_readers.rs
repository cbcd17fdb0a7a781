//! Property tests of the dataset readers on hostile input: random bytes,
//! the fixtures with bytes flipped, lines cut, duplicated or replaced, files
//! truncated. Every reader returns records or an error naming the file (and
//! the line or row where it applies), never panics.
//!
//! Case counts: proptest's default of 256 per property in CI; for a longer
//! local run set `PROPTEST_CASES` (proptest reads it itself), e.g.
//! `PROPTEST_CASES=20000 cargo test -p align-data --test fuzz_readers`.

use std::io::Write;
use std::path::{Path, PathBuf};

use align_data::archive::{bunzip2, nested_tar_gz_member, read_maybe_gz, zip_member};
use align_data::sentiment::{parse_reviews, parse_snippets, read_reviews, read_snippets};
use align_data::tldr::{self, Format};
use align_data::{hh, DataError, Loaded, Location};
use proptest::prelude::*;

/// Proptest's default config (256 cases, `PROPTEST_CASES` honoured),
/// without regression files written into the source tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data");
    std::fs::read(dir.join(name)).unwrap()
}

/// Lines that have broken JSON-lines readers: wrong types, missing fields,
/// truncations, deep nesting, huge numbers, invalid UTF-8.
fn hostile_line() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<Vec<u8>> = [
        &b"{"[..],
        b"}",
        b"[]",
        b"null",
        b"{\"chosen\": 1, \"rejected\": 2}",
        b"{\"chosen\": null, \"rejected\": \"x\"}",
        b"{\"chosen\": \"\\n\\nHuman: a\\n\\nAssistant:\"}",
        b"{\"chosen\": \"\\n\\nAssistant:\", \"rejected\": \"\\n\\nAssistant:\"}",
        b"{\"chosen\": \"\\n\\nAssistant:\\ud800\", \"rejected\": \"\"}",
        b"{\"info\": {}, \"summaries\": [], \"choice\": 0}",
        b"{\"info\": {\"post\": \"p\", \"title\": \"t\", \"subreddit\": \"s\"}, \"summaries\": [{\"text\": \"a\"}, {\"text\": \"b\"}], \"choice\": -9223372036854775808}",
        b"{\"info\": {\"post\": \"p\", \"title\": \"t\", \"subreddit\": \"s\"}, \"summaries\": [{\"text\": \" \"}, {\"text\": \"b\"}], \"choice\": 1}",
        b"{\"choice\": 1e999}",
        b"\xff\xfe\x00garbage",
        b"\xc3",
        b"1\t\t",
        b"\t\t\t",
        b"x\tnan\ttext",
        b"x\tinf\ttext",
        b"x\t1e400\ttext",
        b"\"unterminated",
    ]
    .iter()
    .map(|l| l.to_vec())
    .collect();
    prop_oneof![
        3 => proptest::sample::select(fixed),
        1 => (1usize..2000).prop_map(|d| {
            // Nesting past serde_json's recursion limit.
            let mut v = vec![b'['; d];
            v.extend(std::iter::repeat_n(b']', d));
            v
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..200_000).prop_map(|n| {
            // A huge line.
            let mut v = b"{\"chosen\": \"".to_vec();
            v.extend(std::iter::repeat_n(b'a', n));
            v.extend_from_slice(b"\"}");
            v
        }),
    ]
}

/// One change to a line-based file; indices are taken modulo its length.
#[derive(Debug, Clone)]
enum LineEdit {
    Replace(usize, Vec<u8>),
    Insert(usize, Vec<u8>),
    Delete(usize),
    Duplicate(usize),
    /// Cut the line at this byte (a truncated write).
    Cut(usize, usize),
    /// Flip one byte of the whole file.
    Flip(usize, u8),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let i = any::<usize>();
    prop_oneof![
        3 => (i, hostile_line()).prop_map(|(l, v)| LineEdit::Replace(l, v)),
        2 => (i, hostile_line()).prop_map(|(l, v)| LineEdit::Insert(l, v)),
        1 => i.prop_map(LineEdit::Delete),
        1 => i.prop_map(LineEdit::Duplicate),
        2 => (i, i).prop_map(|(l, c)| LineEdit::Cut(l, c)),
        2 => (i, 1u8..=255).prop_map(|(at, x)| LineEdit::Flip(at, x)),
    ]
}

fn edit_lines(bytes: &[u8], edits: &[LineEdit]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    for e in edits {
        let n = lines.len().max(1);
        if lines.is_empty() {
            lines.push(Vec::new());
        }
        match e {
            LineEdit::Replace(l, v) => lines[l % n] = v.clone(),
            LineEdit::Insert(l, v) => lines.insert(l % (n + 1), v.clone()),
            LineEdit::Delete(l) => {
                lines.remove(l % n);
            }
            LineEdit::Duplicate(l) => {
                let line = lines[l % n].clone();
                lines.insert(l % n, line);
            }
            LineEdit::Cut(l, c) => {
                let line = &mut lines[l % n];
                let at = c % (line.len() + 1);
                line.truncate(at);
            }
            LineEdit::Flip(at, x) => {
                let total: usize = lines.iter().map(Vec::len).sum();
                if total > 0 {
                    let mut at = at % total;
                    for line in &mut lines {
                        if at < line.len() {
                            line[at] ^= x;
                            break;
                        }
                        at -= line.len();
                    }
                }
            }
        }
    }
    lines.join(&b'\n')
}

/// Every malformed row names `file` and a line inside the text.
fn check_rows<T>(loaded: &Loaded<T>, file: &str, text: &[u8]) {
    let lines = text.split(|&b| b == b'\n').count() as u64;
    assert_eq!(loaded.file, file);
    assert_eq!(
        loaded.rows,
        loaded.records.len() + loaded.bad.len() + loaded.skipped
    );
    for b in &loaded.bad {
        assert!(b.to_string().starts_with(file), "{b}");
        match b.at {
            Location::Line(l) => assert!(l >= 1 && l <= lines, "{b}: {lines} lines"),
            Location::Row(r) => assert!(r >= 1, "{b}"),
        }
    }
}

/// The error names the file.
fn check_err(e: &DataError, file: &Path) {
    let shown = e.to_string();
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(shown.contains(&*name), "{shown} does not name {name}");
}

/// Random bytes with a bias toward the bytes that matter to each format.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(
            proptest::sample::select(&b"{}[]\":,\\\n\t\r 0123456789naeflrtu"[..]),
            0..512
        ),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// `bytes` with `flips` applied: `(position, xor)`, positions modulo the length.
fn flipped(bytes: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if !out.is_empty() {
        for &(at, x) in flips {
            let n = out.len();
            out[at % n] ^= x;
        }
    }
    out
}

fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(name, zip::write::FileOptions::default())
        .unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap().into_inner()
}

const PARQUETS: [(&str, Format); 4] = [
    ("openai_summarize_tldr.parquet", Format::CarperaiTldr),
    ("trl-tldr.parquet", Format::TrlTldr),
    ("trl-tldr-preference.parquet", Format::TrlTldrPreference),
    ("trl-tldr-zstd.parquet", Format::TrlTldr),
];

/// Loads a Parquet file as its format says; the outcome only.
fn load_parquet(format: Format, path: &Path) -> Result<usize, DataError> {
    match format {
        Format::CarperaiTldr | Format::TrlTldr => {
            tldr::load_demonstrations(format, path, 1.0).map(|l| l.records.len())
        }
        _ => tldr::load_pairs(format, path, 1.0).map(|l| l.records.len()),
    }
}

proptest! {
    #![proptest_config(config())]

    /// HH lines: the fixture with hostile edits, parsed in memory and loaded
    /// from a file (plain and gzip'd).
    #[test]
    fn hh_survives_hostile_lines(
        edits in proptest::collection::vec(line_edit(), 1..6),
        gz in any::<bool>(),
    ) {
        let text = edit_lines(&fixture("hh-rlhf.jsonl"), &edits);
        let loaded = hh::parse("hh.jsonl", &text);
        check_rows(&loaded, "hh.jsonl", &text);
        let dir = tempfile::tempdir().unwrap();
        let path = if gz {
            write(dir.path(), "hh.jsonl.gz", &gzip(&text))
        } else {
            write(dir.path(), "hh.jsonl", &text)
        };
        match hh::load(&path, 0.5) {
            Ok(l) => check_rows(&l, &path.display().to_string(), &text),
            Err(e) => check_err(&e, &path),
        }
    }

    /// The comparisons reader on the fixture with hostile edits.
    #[test]
    fn comparisons_survive_hostile_lines(edits in proptest::collection::vec(line_edit(), 1..6)) {
        let text = edit_lines(&fixture("comparisons.jsonl"), &edits);
        let loaded = tldr::parse_comparisons("c.jsonl", &text);
        check_rows(&loaded, "c.jsonl", &text);
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "c.jsonl", &text);
        if let Err(e) = tldr::load_pairs(Format::SummarizeFromFeedback, &path, 0.5) {
            check_err(&e, &path);
        }
    }

    /// Random bytes through every line reader and every file reader.
    #[test]
    fn random_bytes_never_panic(data in bytes()) {
        check_rows(&hh::parse("r", &data), "r", &data);
        check_rows(&tldr::parse_comparisons("r", &data), "r", &data);
        check_rows(&parse_snippets("r", &data), "r", &data);
        if let Ok(l) = parse_reviews("r", &data) {
            prop_assert_eq!(l.rows, l.records.len() + l.bad.len() + l.skipped);
            for b in &l.bad {
                prop_assert!(b.to_string().starts_with("r: "));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "x.jsonl", "x.jsonl.gz", "x.parquet", "x.tar.gz", "x.whl", "x.csv.bz2", "x.csv",
            "x.txt",
        ] {
            let path = write(dir.path(), name, &data);
            let outcomes = [
                hh::load(&path, 1.0).err(),
                tldr::load_demonstrations(Format::TrlTldr, &path, 1.0).err(),
                tldr::load_pairs(Format::TrlTldrPreference, &path, 1.0).err(),
                tldr::load_pairs(Format::SummarizeFromFeedback, &path, 1.0).err(),
                read_snippets(&path).err(),
                read_reviews(&path).err(),
                read_maybe_gz(&path).err(),
                nested_tar_gz_member(&path, &["a", "b"]).err(),
                zip_member(&path, "m").err(),
                bunzip2(&data, "x.bz2").err(),
            ];
            for e in outcomes.iter().flatten() {
                let shown = e.to_string();
                prop_assert!(shown.contains("x."), "{} does not name the file", shown);
            }
        }
    }

    /// Snippet TSV and review CSV with hostile edits.
    #[test]
    fn sentiment_files_survive_hostile_lines(edits in proptest::collection::vec(line_edit(), 1..6)) {
        let tsv = b"1\t2.5\tA fine film.\r\n2\t-1\tDull.\r\n3\t0.5\tOk then.\r\n".to_vec();
        let text = edit_lines(&tsv, &edits);
        check_rows(&parse_snippets("s.tsv", &text), "s.tsv", &text);
        let csv = b"category,text,movie_name,has_plot_and_reviews\nfresh,\"Warm,\nwise\",m,True\nrotten,Dull.,m,False\nplot,P,m,True\n".to_vec();
        let text = edit_lines(&csv, &edits);
        match parse_reviews("rt.csv", &text) {
            Ok(l) => {
                for b in &l.bad {
                    prop_assert!(b.to_string().starts_with("rt.csv: line "), "{}", b);
                }
            }
            Err(e) => prop_assert!(e.to_string().starts_with("rt.csv: "), "{}", e),
        }
    }

    /// The Parquet fixtures with bytes flipped (footer and metadata
    /// included) or cut short: records or an error naming the file.
    #[test]
    fn parquet_survives_flipped_and_truncated_bytes(
        which in 0usize..PARQUETS.len(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..8),
        tail_flips in proptest::collection::vec((0usize..64, 1u8..=255), 0..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let (name, format) = PARQUETS[which];
        let mut data = flipped(&fixture(name), &flips);
        // The footer (metadata length, metadata) sits at the end: aim there too.
        let n = data.len();
        for (back, x) in tail_flips {
            if back < n {
                data[n - 1 - back] ^= x;
            }
        }
        if let Some(c) = cut {
            data.truncate(c % (n + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), name, &data);
        if let Err(e) = load_parquet(format, &path) {
            check_err(&e, &path);
        }
    }

    /// Archives (gzip'd tar, nested; zip; bzip2; gzip) with bytes flipped or
    /// cut short.
    #[test]
    fn archives_survive_flipped_and_truncated_bytes(
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..6),
        cut in proptest::option::of(any::<usize>()),
        kind in 0usize..4,
    ) {
        let tsv = b"1\t2.5\tA fine film indeed, and long enough.\r\n";
        let inner = tar_gz(&[("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", tsv)]);
        let csv = b"category,text,movie_name,has_plot_and_reviews\nfresh,Good.,m,True\n";
        let mut bz = Vec::new();
        {
            let mut w = bzip2::write::BzEncoder::new(&mut bz, bzip2::Compression::fast());
            w.write_all(csv).unwrap();
            w.finish().unwrap();
        }
        let (name, data) = match kind {
            0 => ("v.tar.gz", tar_gz(&[("v/additional_resources/hutto_ICWSM_2014.tar.gz", &inner)])),
            1 => ("s.whl", zip_of(align_data::sentiment::RT_MEMBER, &bz)),
            2 => ("rt.csv.bz2", bz.clone()),
            _ => ("hh.jsonl.gz", gzip(&fixture("hh-rlhf.jsonl"))),
        };
        let mut data = flipped(&data, &flips);
        if let Some(c) = cut {
            let n = data.len();
            data.truncate(c % (n + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), name, &data);
        let outcome = match kind {
            0 => read_snippets(&path).map(|l| l.rows),
            1 | 2 => read_reviews(&path).map(|l| l.rows),
            _ => hh::load(&path, 1.0).map(|l| l.rows),
        };
        if let Err(e) = outcome {
            check_err(&e, &path);
        }
    }
}
