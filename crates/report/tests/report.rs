//! End-to-end: a synthetic experiment on disk (prior + 2 runs, 2 seeds,
//! 3 eval steps, 8 prompts × 2 samples, columns reward/kl/length/win_train/
//! win_llm) through `write_experiment` and `write_all`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use align_report::format::{
    samples_path, write_runs, write_samples, RunRecord, RunsFile, SampleRecord,
};
use align_report::tables::{Cell, SeedCell};
use align_report::{write_all, write_experiment};

const PROMPTS: usize = 8;
const SAMPLES: usize = 2;
const STEPS: [usize; 3] = [0, 10, 20];
const COLUMNS: [&str; 5] = ["reward", "kl", "length", "win_train", "win_llm"];

/// A fixed pseudo-random number in [0, 1) for `key` (Knuth's multiplicative hash).
fn h(key: usize) -> f64 {
    ((key as u64).wrapping_mul(2_654_435_761) >> 7) as f64 % 1000.0 / 1000.0
}

/// Each column's value for one completion: simple formulas, so the test can
/// compute the expected means without reading anything back.
fn value(column: &str, run: usize, seed: u64, step: usize, p: usize, s: usize) -> f64 {
    let trained = if run == 0 { 0.0 } else { step as f64 / 20.0 };
    let key = p * 131 + s * 31 + seed as usize * 17 + run * 7 + step * 3;
    match column {
        "reward" => 0.25 * run as f64 * trained + 0.4 * h(key) - 0.2,
        "kl" => trained * 0.5 * run as f64 * (0.8 + 0.4 * h(key + 1)),
        "length" => (5 + (h(key + 2) * 4.0) as usize) as f64,
        "win_train" => {
            (h(key + 3) * 3.0 + 0.3 * run as f64 * trained)
                .floor()
                .min(2.0)
                / 2.0
        }
        "win_llm" => f64::from(h(key + 4) < 0.4 + 0.1 * run as f64 * trained),
        _ => unreachable!(),
    }
}

const RUNS: [(&str, &str); 3] = [("prior", "-"), ("BRAIn", "brain"), ("DPO-sft", "dpo")];

fn record(run: usize, seed: Option<u64>, step: usize, p: usize, s: usize) -> SampleRecord {
    let sd = seed.unwrap_or(0);
    SampleRecord {
        run: RUNS[run].0.to_string(),
        seed,
        step,
        prompt_index: p,
        sample: s,
        prompt: format!("Review \"#{p}\" of <b>Film & Co</b>: continue"),
        response: format!(
            "the film was {} and {} {}",
            ["good", "bad", "fine", "dull"][(p + s + run + sd as usize * step / 10) % 4],
            ["long", "short"][(s + step / 10) % 2],
            p
        ),
        gold: Some(format!("gold review {p} </script> ends")),
        columns: COLUMNS
            .iter()
            .map(|c| (c.to_string(), Some(value(c, run, sd, step, p, s))))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Writes the synthetic experiment `name` into `dir`; `seeds` training seeds.
fn synthetic(dir: &Path, name: &str, seeds: &[u64]) {
    let mut rows = Vec::new();
    for (run, (run_name, estimator)) in RUNS.iter().enumerate() {
        let rel = samples_path(run_name);
        let mut records = Vec::new();
        let (row_seeds, steps): (Vec<Option<u64>>, &[usize]) = if run == 0 {
            (vec![None], &STEPS[..1])
        } else {
            (seeds.iter().map(|&s| Some(s)).collect(), &STEPS[..])
        };
        for seed in row_seeds {
            for &step in steps {
                for p in 0..PROMPTS {
                    for s in 0..SAMPLES {
                        records.push(record(run, seed, step, p, s));
                    }
                }
            }
            rows.push(RunRecord {
                run: run_name.to_string(),
                estimator: estimator.to_string(),
                seed,
                steps: *steps.last().unwrap(),
                seconds: 1.25 * run as f64 + seed.unwrap_or(0) as f64 / 8.0,
                metrics: if run == 0 {
                    vec![]
                } else {
                    vec![
                        (
                            "loss".into(),
                            Some(0.5 / run as f64 + seed.unwrap() as f64 / 100.0),
                        ),
                        ("ess".into(), if seed == Some(1) { None } else { Some(3.5) }),
                    ]
                },
                columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
                eval_steps: steps.to_vec(),
                samples: Some(rel.clone()),
            });
        }
        write_samples(dir, &rel, &records).unwrap();
    }
    let runs = RunsFile {
        experiment: name.to_string(),
        description: Some("Synthetic <test> experiment & \"friends\"".into()),
        machine: "test machine, 1 thread".into(),
        seeds: seeds.to_vec(),
        rows,
    };
    write_runs(dir, &runs).unwrap();
    std::fs::write(
        dir.join("manifest.resolved.toml"),
        "[experiment]\nname = \"x\"\n",
    )
    .unwrap();
}

/// Hand-computed mean of `column` for run `run` at seed `seed`, final step.
fn expected(column: &str, run: usize, seed: u64) -> f64 {
    let step = if run == 0 { 0 } else { 20 };
    let mut sum = 0.0;
    for p in 0..PROMPTS {
        for s in 0..SAMPLES {
            sum += value(column, run, seed, step, p, s);
        }
    }
    sum / (PROMPTS * SAMPLES) as f64
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn summary_numbers_intervals_and_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), "sentiment", &[1, 2]);
    let t = write_experiment(dir.path()).unwrap();
    let s = &t.summary;
    // Judges first, then run-level metrics, then the other columns.
    assert_eq!(
        s.columns,
        [
            "win_train",
            "win_llm",
            "loss",
            "ess",
            "reward",
            "kl",
            "length",
            "distinct_1",
            "distinct_2"
        ]
    );
    let seeds: Vec<(&str, SeedCell)> = s.rows.iter().map(|r| (r.run.as_str(), r.seed)).collect();
    assert_eq!(
        seeds,
        [
            ("prior", SeedCell::Seed(None)),
            ("BRAIn", SeedCell::Seed(Some(1))),
            ("BRAIn", SeedCell::Seed(Some(2))),
            ("BRAIn", SeedCell::MeanOf(2)),
            ("DPO-sft", SeedCell::Seed(Some(1))),
            ("DPO-sft", SeedCell::Seed(Some(2))),
            ("DPO-sft", SeedCell::MeanOf(2)),
        ]
    );
    for (k, row) in s.rows.iter().enumerate() {
        let run = RUNS.iter().position(|(n, _)| *n == row.run).unwrap();
        for c in COLUMNS {
            let j = s.column(c).unwrap();
            let want = match row.seed {
                SeedCell::Seed(seed) => expected(c, run, seed.unwrap_or(0)),
                SeedCell::MeanOf(_) => (expected(c, run, 1) + expected(c, run, 2)) / 2.0,
            };
            let Cell::Est(e) = row.cells[j] else {
                panic!("row {k} {c}: {:?}", row.cells[j]);
            };
            assert!(close(e.mean, want), "row {k} {c}: {} vs {want}", e.mean);
            assert!(e.lo <= e.mean && e.mean <= e.hi, "row {k} {c}: {e:?}");
        }
    }
    // Run-level metrics: the value per seed; the mean over seeds, with a
    // t interval where both seeds have one and the bare value otherwise.
    let loss = s.column("loss").unwrap();
    let ess = s.column("ess").unwrap();
    assert_eq!(s.rows[1].cells[loss], Cell::Value(0.51));
    let Cell::Est(agg) = s.rows[3].cells[loss] else {
        panic!("{:?}", s.rows[3].cells[loss])
    };
    assert!(
        close(agg.mean, 0.515) && agg.lo < 0.51 && agg.hi > 0.52,
        "{agg:?}"
    );
    assert_eq!(s.rows[1].cells[ess], Cell::Empty);
    assert_eq!(s.rows[3].cells[ess], Cell::Value(3.5));
    assert_eq!(s.rows[0].cells[loss], Cell::Empty);

    // The CSV says the same at full precision, with _lo/_hi/_se.
    let (header, rows) = read_csv(&dir.path().join("summary.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(
        &header[..5],
        ["run", "estimator", "seed", "steps", "seconds"]
    );
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[3][col("seed")], "mean of 2");
    assert_eq!(rows[0][col("seed")], "");
    assert_eq!(rows[1][col("ess")], "");
    for c in ["reward", "win_llm"] {
        let got: f64 = rows[2][col(c)].parse().unwrap();
        assert!(close(got, expected(c, 1, 2)), "{c}: {got}");
        let lo: f64 = rows[2][col(&format!("{c}_lo"))].parse().unwrap();
        let hi: f64 = rows[2][col(&format!("{c}_hi"))].parse().unwrap();
        let se: f64 = rows[2][col(&format!("{c}_se"))].parse().unwrap();
        assert!(lo <= got && got <= hi && se >= 0.0);
    }
    // distinct-n of the final-step responses of BRAIn at seed 1.
    let texts: Vec<String> = (0..PROMPTS)
        .flat_map(|p| (0..SAMPLES).map(move |s| record(1, Some(1), 20, p, s).response))
        .collect();
    let d1 = align_report::stats::distinct_n(texts.iter().map(String::as_str), 1);
    assert!(close(rows[1][col("distinct_1")].parse().unwrap(), d1));

    // The Markdown has the interval in the cell.
    assert!(t.markdown.contains("mean of 2"), "{}", t.markdown);
    assert!(t.markdown.lines().nth(1).unwrap().contains("--:"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("summary.md")).unwrap(),
        t.markdown
    );
}

/// Every file under `dir`, with its bytes.
fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn outputs_are_deterministic_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), "sentiment", &[1, 2]);
    let t = write_experiment(dir.path()).unwrap();
    let names: Vec<String> = t
        .written
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "summary.csv",
            "summary.md",
            "plots/frontier.svg",
            "plots/frontier.png",
            "plots/winrate-train.svg",
            "plots/winrate-train.png",
            "plots/winrate-llm.svg",
            "plots/winrate-llm.png",
            "report.html"
        ]
    );
    let first = snapshot_dir(dir.path());
    write_experiment(dir.path()).unwrap();
    let second = snapshot_dir(dir.path());
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &first {
        assert!(
            second[path] == *bytes,
            "{} changed on rerun",
            path.display()
        );
    }
    // No temporary files left next to the outputs.
    assert!(first.keys().all(|p| !p.to_string_lossy().ends_with(".tmp")));

    for svg in ["frontier", "winrate-train", "winrate-llm"] {
        let text = std::fs::read_to_string(dir.path().join(format!("plots/{svg}.svg"))).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
        for (run, _) in RUNS {
            assert!(
                text.contains(&format!(">\n{run}\n</text>")),
                "{svg}.svg lacks {run}"
            );
        }
        let png = std::fs::read(dir.path().join(format!("plots/{svg}.png"))).unwrap();
        check_png(&png, 800, 500);
    }

    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    // Text is escaped, and the embedded JSON cannot close its script tag.
    assert!(html.contains("Synthetic &lt;test&gt; experiment &amp; &quot;friends&quot;"));
    assert!(!html.contains("<b>Film"));
    assert!(!html.contains("</script> ends"));
    assert!(html.contains("\\u003c/script> ends"));
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(
        !html.contains("http://") || html.matches("http://").count() == 3,
        "no network"
    );
}

/// A PNG: signature, chunks with valid CRCs, the size, and IDAT that
/// inflates to exactly one filter byte plus RGB per row.
fn check_png(bytes: &[u8], width: u32, height: u32) {
    use std::io::Read;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let mut at = 8;
    let mut idat = Vec::new();
    let mut kinds = Vec::new();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + len];
        let crc = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap());
        let mut c = flate2::Crc::new();
        c.update(kind);
        c.update(data);
        assert_eq!(c.sum(), crc, "CRC of {}", String::from_utf8_lossy(kind));
        if kind == b"IHDR" {
            assert_eq!(u32::from_be_bytes(data[0..4].try_into().unwrap()), width);
            assert_eq!(u32::from_be_bytes(data[4..8].try_into().unwrap()), height);
        }
        if kind == b"IDAT" {
            idat.extend_from_slice(data);
        }
        kinds.push(String::from_utf8_lossy(kind).to_string());
        at += 12 + len;
    }
    assert_eq!(kinds.first().map(String::as_str), Some("IHDR"));
    assert_eq!(kinds.last().map(String::as_str), Some("IEND"));
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw.len(), height as usize * (1 + 3 * width as usize));
    // Not blank: the plot drew something other than the white background.
    assert!(raw.iter().any(|&b| b != 255 && b != 0));
}

#[test]
fn snapshots_of_summary_and_cross_table() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("sentiment");
    let b = root.path().join("summaries");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    synthetic(&a, "sentiment", &[1, 2]);
    synthetic(&b, "summaries", &[3]);
    // A directory without runs.json is not an experiment.
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    let all = write_all(root.path()).unwrap();
    assert_eq!(all.experiments.len(), 2);
    insta::assert_snapshot!("summary_md", all.experiments[0].1.markdown);
    insta::assert_snapshot!("summary_md_one_seed", all.experiments[1].1.markdown);
    insta::assert_snapshot!("tables_md", all.markdown);
    assert_eq!(
        std::fs::read_to_string(root.path().join("tables.md")).unwrap(),
        all.markdown
    );
    let (header, rows) = read_csv(&root.path().join("tables.csv"));
    assert_eq!(header[0], "method");
    assert_eq!(header[1], "sentiment · train");
    assert_eq!(header[2], "sentiment · train_lo");
    let methods: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(methods, ["prior", "BRAIn", "DPO-sft"]);
    // BRAIn's sentiment · llm cell is the mean over its two seeds.
    let llm = header.iter().position(|h| h == "sentiment · llm").unwrap();
    let want = (expected("win_llm", 1, 1) + expected("win_llm", 1, 2)) / 2.0;
    assert!(close(rows[1][llm].parse().unwrap(), want));
}

#[test]
fn interleaved_rows_group_by_run_and_big_runs_are_sampled_in_the_page() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), "sentiment", &[1, 2]);
    // Seeds outer, runs inner: rows of a run are not adjacent in the file.
    let mut runs = align_report::format::read_runs(dir.path()).unwrap();
    let order = [0, 1, 3, 2, 4];
    runs.rows = order.iter().map(|&i| runs.rows[i].clone()).collect();
    write_runs(dir.path(), &runs).unwrap();
    let t = write_experiment(dir.path()).unwrap();
    let seq: Vec<String> = t
        .summary
        .rows
        .iter()
        .map(|r| format!("{}/{:?}", r.run, r.seed))
        .collect();
    assert_eq!(
        seq,
        [
            "prior/Seed(None)",
            "BRAIn/Seed(Some(1))",
            "BRAIn/Seed(Some(2))",
            "BRAIn/MeanOf(2)",
            "DPO-sft/Seed(Some(1))",
            "DPO-sft/Seed(Some(2))",
            "DPO-sft/MeanOf(2)"
        ]
    );

    // One run, 4 eval steps of 200 completions: the page keeps the whole
    // final step and 300 of the rest (100 per step).
    let big = tempfile::tempdir().unwrap();
    let steps = [0, 10, 20, 30];
    let records: Vec<SampleRecord> = steps
        .iter()
        .flat_map(|&step| {
            (0..100).flat_map(move |p| (0..2).map(move |s| record(1, Some(1), step, p, s)))
        })
        .collect();
    write_samples(big.path(), &samples_path("BRAIn"), &records).unwrap();
    let mut row = runs.rows[1].clone();
    row.eval_steps = steps.to_vec();
    row.steps = 30;
    write_runs(
        big.path(),
        &RunsFile {
            rows: vec![row],
            seeds: vec![1],
            ..runs.clone()
        },
    )
    .unwrap();
    write_experiment(big.path()).unwrap();
    let html = std::fs::read_to_string(big.path().join("report.html")).unwrap();
    let start = html.find("id=\"samples-data\">").unwrap() + "id=\"samples-data\">".len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
    let recs = data["runs"][0]["records"].as_array().unwrap();
    let at = |step: u64| recs.iter().filter(|r| r["step"] == step).count();
    assert_eq!((at(0), at(10), at(20), at(30)), (100, 100, 100, 200));
    assert_eq!(data["runs"][0]["totals"]["0"], 200);
    // Prompts are stored once, however many steps and samples share them.
    assert_eq!(data["prompts"].as_array().unwrap().len(), 100);
}

/// `chromium` on PATH, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// Runs `cmd` with a time limit, returning its stdout.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?}: {status}");
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out.path()).unwrap()
}

#[test]
fn report_renders_in_a_headless_browser() {
    if std::env::var("BRAIN_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("BRAIN_SKIP_BROWSER=1: not rendering report.html in a browser");
        return;
    }
    let Some(chromium) = chromium() else {
        panic!(
            "chromium is not on PATH, so report.html cannot be checked in a headless browser. \
             Install it with `sudo apt-get install -y chromium` (Debian/Ubuntu; `cargo xtask test` \
             does that when it is missing), or set BRAIN_SKIP_BROWSER=1 to skip this test."
        );
    };
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), "sentiment", &[1, 2]);
    write_experiment(dir.path()).unwrap();
    let page = format!("file://{}", dir.path().join("report.html").display());
    let profile = tempfile::tempdir().unwrap();
    let browser = |extra: &[&str]| {
        let mut cmd = Command::new(&chromium);
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&page);
        cmd
    };
    let dom = run_with_timeout(&mut browser(&["--dump-dom"]), Duration::from_secs(90));
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the script did not run:\n{dom}"
    );
    for (run, _) in RUNS {
        // Only the script creates these: the page source has none.
        assert!(
            dom.contains(&format!("<li data-run=\"{run}\">")),
            "run list lacks {run}"
        );
        assert!(
            dom.contains(&format!(">{run}</option>")),
            "run select lacks {run}"
        );
    }
    // It opens on the first trained run at its final step, both seeds.
    assert_eq!(dom.matches("class=\"card\"").count(), 2 * PROMPTS * SAMPLES);
    let shot = dir.path().join("screenshot.png");
    run_with_timeout(
        &mut browser(&[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ]),
        Duration::from_secs(90),
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    if let Some(keep) = std::env::var_os("BRAIN_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
