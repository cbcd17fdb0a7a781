//! The HH-RLHF and TL;DR readers on small files written in the public formats
//! by `tests/fixtures/data/make_fixtures.py` (pyarrow), checked against the
//! records that script built from their parts (`expected.json`).

use std::path::PathBuf;

use align_data::records::{Demonstration, PreferencePair};
use align_data::tldr::{self, Format};
use align_data::{hh, Loaded, Location};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn expected(file: &str) -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all[file].clone()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

fn expected_pairs(file: &str) -> Vec<PreferencePair> {
    expected(file)["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| PreferencePair {
            prompt: s(&r["prompt"]),
            chosen: s(&r["chosen"]),
            rejected: s(&r["rejected"]),
        })
        .collect()
}

fn expected_demos(file: &str) -> Vec<Demonstration> {
    expected(file)["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Demonstration {
            prompt: s(&r["prompt"]),
            reference: s(&r["reference"]),
        })
        .collect()
}

/// The malformed rows match expected.json's positions and reasons, and every
/// message names the file.
fn check_bad<T>(loaded: &Loaded<T>, file: &str) {
    let e = expected(file);
    assert_eq!(
        loaded.rows as u64,
        e["rows"].as_u64().unwrap(),
        "{file}: rows"
    );
    let want = e["bad"].as_array().unwrap();
    assert_eq!(loaded.bad.len(), want.len(), "{file}: {:?}", loaded.bad);
    for (got, want) in loaded.bad.iter().zip(want) {
        let at = match (want.get("line"), want.get("row")) {
            (Some(l), _) => Location::Line(l.as_u64().unwrap()),
            (_, Some(r)) => Location::Row(r.as_u64().unwrap()),
            _ => panic!("expected.json: no position"),
        };
        assert_eq!(got.at, at, "{got}");
        let reason = want["reason"].as_str().unwrap();
        assert!(got.reason.contains(reason), "{got} lacks `{reason}`");
        assert!(got.to_string().starts_with(&got.file) && got.file.ends_with(file));
    }
}

#[test]
fn hh_round_trips_prompt_chosen_rejected_and_reports_bad_lines() {
    let file = "hh-rlhf.jsonl";
    let loaded = hh::load(&dir().join(file), 0.5).unwrap();
    assert_eq!(loaded.records, expected_pairs(file));
    check_bad(&loaded, file);
    // Every record recombines into the original dialogues.
    for p in &loaded.records {
        assert!(p.prompt.ends_with(hh::ASSISTANT));
    }
}

#[test]
fn hh_refuses_a_file_with_too_many_bad_lines() {
    let e = hh::load(&dir().join("hh-rlhf.jsonl"), 0.01)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 of 8 rows are malformed (50.00%)"), "{e}");
    assert!(
        e.contains("hh-rlhf.jsonl: line 4: `rejected` does not start with the prompt"),
        "{e}"
    );
    assert!(e.contains("refusing to load"), "{e}");
}

#[test]
fn hh_reads_gzip_files() {
    let file = "hh-rlhf-clean.jsonl.gz";
    let loaded = hh::load(&dir().join(file), 0.0).unwrap();
    assert_eq!(loaded.records, expected_pairs(file));
    check_bad(&loaded, file);
}

#[test]
fn carperai_tldr_parquet_round_trips_across_row_groups() {
    let file = "openai_summarize_tldr.parquet";
    let loaded = tldr::load_demonstrations(Format::CarperaiTldr, &dir().join(file), 0.5).unwrap();
    assert_eq!(loaded.records, expected_demos(file));
    check_bad(&loaded, file);
    // Row groups are read in parallel: repeat to catch readers sharing a cursor.
    for _ in 0..50 {
        let again = tldr::load_demonstrations(Format::CarperaiTldr, &dir().join(file), 0.5);
        assert_eq!(again.unwrap().records, loaded.records);
    }
    let e = tldr::load_demonstrations(Format::CarperaiTldr, &dir().join(file), 0.1).unwrap_err();
    assert!(e.to_string().contains("2 of 5 rows are malformed"), "{e}");
}

#[test]
fn trl_tldr_parquet_round_trips() {
    let file = "trl-tldr.parquet";
    let loaded = tldr::load_demonstrations(Format::TrlTldr, &dir().join(file), 0.0).unwrap();
    assert_eq!(loaded.records, expected_demos(file));
    check_bad(&loaded, file);
}

#[test]
fn trl_tldr_preference_parquet_round_trips() {
    let file = "trl-tldr-preference.parquet";
    let loaded = tldr::load_pairs(Format::TrlTldrPreference, &dir().join(file), 0.3).unwrap();
    assert_eq!(loaded.records, expected_pairs(file));
    check_bad(&loaded, file);
}

#[test]
fn summarize_from_feedback_comparisons_round_trip_and_skip_cnn() {
    let file = "comparisons.jsonl";
    let loaded = tldr::load_pairs(Format::SummarizeFromFeedback, &dir().join(file), 0.25).unwrap();
    assert_eq!(loaded.records, expected_pairs(file));
    assert_eq!(
        loaded.skipped as u64,
        expected(file)["skipped"].as_u64().unwrap()
    );
    check_bad(&loaded, file);
}

#[test]
fn wrong_columns_codecs_formats_and_paths_fail_clearly() {
    // A trl-lib/tldr file read as CarperAI: no `label` column.
    let e = tldr::load_demonstrations(Format::CarperaiTldr, &dir().join("trl-tldr.parquet"), 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no `label` column (columns: prompt, completion)"),
        "{e}"
    );
    let e = tldr::load_demonstrations(Format::TrlTldr, &dir().join("trl-tldr-zstd.parquet"), 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trl-tldr-zstd.parquet") && e.contains("snappy"),
        "{e}"
    );
    let e = tldr::load_pairs(Format::TrlTldr, &dir().join("trl-tldr.parquet"), 0.0).unwrap_err();
    assert!(e.to_string().contains("not preference pairs"), "{e}");
    let e = hh::load(&dir().join("absent.jsonl"), 0.01)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing the HH-RLHF file") && e.contains("absent.jsonl"),
        "{e}"
    );
    assert!(e.contains("point `path` in the manifest"), "{e}");
}

#[test]
fn one_config_loads_every_format() {
    for (format, file, pairs) in [
        ("hh-rlhf", "hh-rlhf-clean.jsonl.gz", true),
        ("carperai-tldr", "openai_summarize_tldr.parquet", false),
        ("trl-tldr", "trl-tldr.parquet", false),
        ("trl-tldr-preference", "trl-tldr-preference.parquet", true),
        ("summarize-from-feedback", "comparisons.jsonl", true),
    ] {
        let toml = format!(
            "format = \"{format}\"\npath = {:?}\nmax_bad_fraction = 0.5\n",
            dir().join(file).display().to_string()
        );
        let config: align_data::FileDatasetConfig = toml::from_str(&toml).unwrap();
        match config.load().unwrap() {
            align_data::FileRecords::Pairs(l) => {
                assert!(pairs, "{format}");
                assert_eq!(l.records, expected_pairs(file));
            }
            align_data::FileRecords::Demonstrations(l) => {
                assert!(!pairs, "{format}");
                assert_eq!(l.records, expected_demos(file));
            }
        }
    }
    let e = toml::from_str::<align_data::FileDatasetConfig>("format = \"hh\"\npath = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant `hh`"), "{e}");
}
