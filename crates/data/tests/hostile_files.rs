//! Hostile dataset files: garbage bytes, truncated and huge lines, wrong
//! field types, missing fields, empty files, Parquet metadata that lies
//! about rows and offsets. Each gives an error naming the file (and the
//! line or row where it applies), never a panic; sizes a file states are
//! checked before anything is allocated from them.

use std::path::{Path, PathBuf};

use align_data::sentiment::parse_snippets;
use align_data::tldr::{self, Format};
use align_data::{hh, Location};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataWriter, RowGroupMetaData};
use parquet::file::reader::{FileReader, SerializedFileReader};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data")
        .join(name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

const GOOD: &str = r#"{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"}"#;

#[test]
fn hh_lines_of_every_kind_of_wrong_are_named_by_line() {
    let huge = format!(
        r#"{{"chosen": "\n\nHuman: {}\n\nAssistant: a", "rejected": "\n\nHuman: {}\n\nAssistant: b"}}"#,
        "x".repeat(3 << 20),
        "x".repeat(3 << 20)
    );
    let lines: Vec<Vec<u8>> = vec![
        GOOD.into(),
        br#"{"chosen": 1, "rejected": "x"}"#.to_vec(), // 2: wrong type
        br#"{"chosen": "\n\nHuman: a\n\nAssistant: b"}"#.to_vec(), // 3: missing field
        GOOD[..40].into(),                             // 4: truncated line
        b"\xff\xfe\x00\x01garbage".to_vec(),           // 5: not UTF-8
        format!(
            "{{\"extra\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
        .into_bytes(), // 6: 100k deep, no stack overflow
        huge.into_bytes(),                             // 7: 6 MB, fine
        GOOD.into(),
    ];
    let text = lines.join(&b'\n');
    let loaded = hh::parse("h.jsonl", &text);
    assert_eq!(loaded.rows, 8);
    assert_eq!(loaded.records.len(), 3);
    let at: Vec<Location> = loaded.bad.iter().map(|b| b.at).collect();
    assert_eq!(at, [2, 3, 4, 5, 6].map(Location::Line), "{:?}", loaded.bad);
    let reasons: Vec<String> = loaded.bad.iter().map(ToString::to_string).collect();
    assert!(
        reasons[0].starts_with(
            "h.jsonl: line 2: not a {\"chosen\", \"rejected\"} object: invalid type: integer `1`"
        ),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("line 3") && reasons[1].contains("missing field `rejected`"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("line 4") && reasons[2].contains("EOF while parsing"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].starts_with("h.jsonl: line 5: not UTF-8"),
        "{}",
        reasons[3]
    );
    assert!(
        reasons[4].contains("line 6") && reasons[4].contains("missing field `chosen`"),
        "{}",
        reasons[4]
    );

    // From a file: too many bad lines refuses it, listing them by line.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "h.jsonl", &text);
    let e = hh::load(&path, 0.01).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: 5 of 8 rows are malformed", path.display())),
        "{e}"
    );
    assert!(e.contains("h.jsonl: line 6: "), "{e}");
}

#[test]
fn empty_blank_and_garbage_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty.jsonl", &b""[..]),
        ("blank.jsonl", b"\n\n  \r\n\t\n"),
    ] {
        let path = write(dir.path(), name, bytes);
        let e = hh::load(&path, 0.5).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no usable rows", path.display()));
        let e = tldr::load_pairs(Format::SummarizeFromFeedback, &path, 0.5)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("{}: no usable rows", path.display()));
    }
    // Not gzip, though named so.
    let path = write(dir.path(), "h.jsonl.gz", b"plain text, not gzip\n");
    let e = hh::load(&path, 0.5).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    // A gzip stream cut short.
    let whole = std::fs::read(fixture("hh-rlhf-clean.jsonl.gz")).unwrap();
    let path = write(dir.path(), "cut.jsonl.gz", &whole[..whole.len() / 2]);
    let e = hh::load(&path, 0.5).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    // Garbage as Parquet, empty Parquet, Parquet cut short.
    for (name, bytes) in [
        ("garbage.parquet", b"\x00\x01garbagePAR1".to_vec()),
        ("empty.parquet", Vec::new()),
        (
            "cut.parquet",
            std::fs::read(fixture("trl-tldr.parquet")).unwrap()[..900].to_vec(),
        ),
    ] {
        let path = write(dir.path(), name, &bytes);
        let e = tldr::load_demonstrations(Format::TrlTldr, &path, 0.5)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: not a readable Parquet file", path.display())),
            "{e}"
        );
    }
}

#[test]
fn comparison_fields_of_the_wrong_type_or_range_are_malformed_rows() {
    let ok = r#"{"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}"#;
    let lines = [
        ok.to_string(),
        ok.replace("\"choice\": 0", "\"choice\": -9223372036854775808"),
        ok.replace("\"choice\": 0", "\"choice\": 1e999"),
        ok.replace("\"choice\": 0", "\"choice\": \"0\""),
        ok.replace("[{\"text\": \"a\"}, {\"text\": \"b\"}]", "{}"),
        ok.replace("\"post\": \"p\", ", ""),
    ];
    let text = lines.join("\n");
    let loaded = tldr::parse_comparisons("c.jsonl", text.as_bytes());
    assert_eq!(loaded.records.len(), 1);
    let bad: Vec<String> = loaded.bad.iter().map(ToString::to_string).collect();
    assert_eq!(bad.len(), 5, "{bad:?}");
    assert_eq!(
        bad[0],
        "c.jsonl: line 2: `choice` must be 0 or 1, got -9223372036854775808"
    );
    assert!(
        bad[1].starts_with("c.jsonl: line 3: not a comparison object"),
        "{}",
        bad[1]
    );
    assert!(
        bad[2].contains("line 4") && bad[2].contains("invalid type: string"),
        "{}",
        bad[2]
    );
    assert!(
        bad[3].contains("line 5") && bad[3].contains("invalid type: map"),
        "{}",
        bad[3]
    );
    assert_eq!(bad[4], "c.jsonl: line 6: `info.post` is missing");
}

#[test]
fn non_finite_ratings_are_malformed_rows() {
    let tsv =
        b"1\tnan\tA film.\n2\tinf\tA film.\n3\t-inf\tA film.\n4\t1e400\tA film.\n5\t1.0\tFine.\n";
    let l = parse_snippets("s.tsv", tsv);
    assert_eq!(l.records.len(), 1);
    let bad: Vec<String> = l.bad.iter().map(ToString::to_string).collect();
    assert_eq!(
        bad,
        [
            "s.tsv: line 1: mean valence NaN is outside −4..4",
            "s.tsv: line 2: mean valence inf is outside −4..4",
            "s.tsv: line 3: mean valence -inf is outside −4..4",
            "s.tsv: line 4: mean valence inf is outside −4..4",
        ]
    );
}

/// The fixture `name` with its footer rewritten after `edit` changes the
/// metadata of its row groups (the data pages are left as they are).
fn with_row_groups(
    name: &str,
    edit: impl Fn(usize, RowGroupMetaData) -> RowGroupMetaData,
) -> Vec<u8> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let reader = SerializedFileReader::new(std::fs::File::open(fixture(name)).unwrap()).unwrap();
    let meta: ParquetMetaData = reader.metadata().clone();
    let groups = meta
        .row_groups()
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, g)| edit(i, g))
        .collect();
    let meta = meta.into_builder().set_row_groups(groups).build();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let mut out = bytes[..n - 8 - footer].to_vec();
    ParquetMetaDataWriter::new(&mut out, &meta)
        .finish()
        .unwrap();
    out
}

#[test]
fn parquet_metadata_that_lies_is_refused_before_reading_rows() {
    let dir = tempfile::tempdir().unwrap();
    let name = "openai_summarize_tldr.parquet";
    // The rewriting itself keeps a readable file.
    let same = write(dir.path(), name, &with_row_groups(name, |_, g| g));
    let loaded = tldr::load_demonstrations(Format::CarperaiTldr, &same, 0.5).unwrap();
    assert_eq!(loaded.rows, 5);

    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            with_row_groups(name, |i, g| {
                if i == 0 {
                    g.into_builder().set_num_rows(-5).build().unwrap()
                } else {
                    g
                }
            }),
            "row group 0 states -5 rows".into(),
        ),
        (
            with_row_groups(name, |_, g| {
                g.into_builder().set_num_rows(1 << 40).build().unwrap()
            }),
            "rows, more than the limit of 67108864 rows read from one file".into(),
        ),
        (
            with_row_groups(name, |_, g| {
                let cols = g
                    .columns()
                    .iter()
                    .map(|c| {
                        c.clone()
                            .into_builder()
                            .set_data_page_offset(1 << 40)
                            .set_dictionary_page_offset(None)
                            .build()
                            .unwrap()
                    })
                    .collect();
                g.into_builder().set_column_metadata(cols).build().unwrap()
            }),
            "row group 0, column 0: the metadata places it at offset 1099511627776".into(),
        ),
        (
            with_row_groups(name, |_, g| {
                let cols = g
                    .columns()
                    .iter()
                    .map(|c| {
                        c.clone()
                            .into_builder()
                            .set_total_compressed_size(-1)
                            .build()
                            .unwrap()
                    })
                    .collect();
                g.into_builder().set_column_metadata(cols).build().unwrap()
            }),
            "row group 0, column 0: the metadata places it at offset".into(),
        ),
    ];
    for (bytes, want) in cases {
        let path = write(dir.path(), name, &bytes);
        let e = tldr::load_demonstrations(Format::CarperaiTldr, &path, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(e.contains(&want), "{e} lacks `{want}`");
    }

    // A flipped byte in the metadata once made the reader panic ("column
    // start and length should not be negative"); now it is refused.
    let mut bytes = std::fs::read(fixture(name)).unwrap();
    bytes[2182] ^= 7;
    let path = write(dir.path(), name, &bytes);
    let e = tldr::load_demonstrations(Format::CarperaiTldr, &path, 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}: ", path.display())) && e.contains("outside the file"),
        "{e}"
    );
}
