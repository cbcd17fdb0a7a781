//! The result files of an output directory, compared across runs with the
//! wall-clock seconds masked (the one thing two equal runs do not share):
//! for `tests/resume.rs` and `tests/sweep.rs`.

use std::path::Path;

/// Every result file under `dir` (checkpoints, the jobs' own directories,
/// the lock and the marker aside), with the wall-clock seconds masked.
pub fn results(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if ["checkpoints", "jobs", ".lock", "run-state.json"].contains(&rel.as_str()) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            let Ok(text) = String::from_utf8(bytes.clone()) else {
                files.push((rel, format!("{bytes:?}")));
                continue;
            };
            let mut text = mask_seconds_fields(&text);
            if rel.starts_with("summary.") {
                text = mask_seconds_column(&text);
            }
            if rel == "report.html" {
                text = mask_seconds_cells(&text);
            }
            files.push((rel, text));
        }
    }
    files.sort();
    files
}

fn mask_seconds_fields(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"seconds\":") {
        let (head, tail) = rest.split_at(at + "\"seconds\":".len());
        out.push_str(head);
        out.push('#');
        let end = tail.find([',', '}']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the `seconds` column of summary.md (split on `|`) or
/// summary.csv (read as CSV: run names may hold commas) by `#`.
fn mask_seconds_column(text: &str) -> String {
    if !text.starts_with('|') {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().clone();
        let col = header
            .iter()
            .position(|h| h == "seconds")
            .expect("a seconds column");
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&header).unwrap();
        for rec in r.records() {
            let rec = rec.unwrap();
            w.write_record(
                rec.iter()
                    .enumerate()
                    .map(|(i, c)| if i == col { "#" } else { c }),
            )
            .unwrap();
        }
        return String::from_utf8(w.into_inner().unwrap()).unwrap();
    }
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split('|')
        .map(str::trim)
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "seconds")
        .expect("a seconds column");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let mut cells: Vec<&str> = l.split('|').collect();
            if i > 1 && cells.len() > col {
                cells[col] = "#";
            }
            cells.join("|")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn mask_seconds_cells(text: &str) -> String {
    text.lines()
        .map(|l| {
            if !l.starts_with("<tr><td>") && !l.starts_with("<tr class=\"agg\"><td>") {
                return l.to_string();
            }
            let mut cells: Vec<String> = l.split("</td>").map(str::to_string).collect();
            if cells.len() > 5 {
                let open = cells[4].rfind('>').expect("a cell") + 1;
                cells[4].replace_range(open.., "#");
            }
            cells.join("</td>")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a` and `b` hold the same result files, equal but for the seconds, and
/// among them every file in `must` (a name ending in `/`: a folder with files).
pub fn assert_same_results(a: &Path, b: &Path, must: &[&str]) {
    let (x, y) = (results(a), results(b));
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&x), names(&y));
    for m in must {
        let found = match m.strip_suffix('/') {
            Some(_) => x.iter().any(|(n, _)| n.starts_with(m)),
            None => x.iter().any(|(n, _)| n == m),
        };
        assert!(found, "no {m}: {:?}", names(&x));
    }
    for ((name, p), (_, q)) in x.iter().zip(&y) {
        assert!(p == q, "{name} differs:\n{p}\n---\n{q}");
    }
}
