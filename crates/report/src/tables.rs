//! The summary table of one experiment (one row per run and seed, plus a
//! mean-over-seeds row per run) and the cross-experiment table of win rates,
//! as CSV (full precision) and Markdown (4 decimals, intervals in the cell).

use crate::format::{final_step, Experiment, RunRecord, SampleRecord};
use crate::stats::{across_seeds, bootstrap_over_prompts, distinct_n, Estimate};

/// A per-completion column that holds a judge's win rate against gold.
pub const JUDGE_PREFIX: &str = "win_";

/// One value of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    Empty,
    Value(f64),
    /// A mean with its 95% interval (over prompts, or across seeds).
    Est(Estimate),
}

impl Cell {
    pub fn mean(&self) -> Option<f64> {
        match self {
            Cell::Empty => None,
            Cell::Value(v) => Some(*v),
            Cell::Est(e) => Some(e.mean),
        }
        .filter(|v| !v.is_nan())
    }
}

/// The seed cell: a run at one seed, or the mean over several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedCell {
    Seed(Option<u64>),
    MeanOf(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub run: String,
    pub estimator: String,
    pub seed: SeedCell,
    pub steps: Option<usize>,
    pub seconds: Option<f64>,
    /// Parallel to [`Summary::columns`].
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Value columns after run, estimator, seed, steps, seconds: the judges'
    /// win rates, the run-level metrics, the other per-completion columns,
    /// then `distinct_1`, `distinct_2` (each group in first-appearance order).
    pub columns: Vec<String>,
    pub rows: Vec<SummaryRow>,
}

impl Summary {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The row that stands for `run` in cross-experiment tables: its mean
    /// over seeds when it has several, else its only row.
    pub fn representative(&self, run: &str) -> Option<&SummaryRow> {
        let rows: Vec<&SummaryRow> = self.rows.iter().filter(|r| r.run == run).collect();
        rows.iter()
            .find(|r| matches!(r.seed, SeedCell::MeanOf(_)))
            .copied()
            .or_else(|| (rows.len() == 1).then(|| rows[0]))
    }

    /// Run names in first-appearance order.
    pub fn runs(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !names.contains(&r.run.as_str()) {
                names.push(&r.run);
            }
        }
        names
    }
}

/// Pushes the names of `items` not yet in `into`, in order.
fn union_into<'a>(into: &mut Vec<String>, items: impl IntoIterator<Item = &'a String>) {
    for c in items {
        if !into.contains(c) {
            into.push(c.clone());
        }
    }
}

/// Row indices grouped by run name, runs in first-appearance order (rows of
/// one run stay in file order even when the file interleaves runs).
pub fn groups(rows: &[RunRecord]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match out.iter_mut().find(|(name, _)| *name == r.run) {
            Some((_, idx)) => idx.push(i),
            None => out.push((r.run.clone(), vec![i])),
        }
    }
    out
}

/// The mean of `column` over `records` at `step`, bootstrapped over prompts;
/// `None` when no record there has a value.
pub fn column_estimate(records: &[&SampleRecord], column: &str, step: usize) -> Option<Estimate> {
    let (mut values, mut prompts) = (Vec::new(), Vec::new());
    for r in records.iter().filter(|r| r.step == step) {
        if let Some(Some(v)) = r.columns.get(column) {
            if v.is_finite() {
                values.push(*v);
                prompts.push(r.prompt_index);
            }
        }
    }
    (!values.is_empty()).then(|| bootstrap_over_prompts(&values, &prompts))
}

/// Combines one estimate per seed: a single one stands as it is (its
/// interval over prompts); several give the Student-t interval across seeds.
pub fn combine_seeds(per_seed: &[Estimate]) -> Option<Estimate> {
    match per_seed {
        [] => None,
        [one] => Some(*one),
        many => Some(across_seeds(
            &many.iter().map(|e| e.mean).collect::<Vec<_>>(),
        )),
    }
}

/// Token ids (digits and spaces) are not text: distinct-n of them says little.
fn has_text(records: &[&SampleRecord]) -> bool {
    records.iter().any(|r| {
        r.response
            .chars()
            .any(|c| !c.is_ascii_digit() && !c.is_whitespace())
    })
}

/// The summary of an experiment (see the crate docs for the layout).
pub fn summary(exp: &Experiment) -> Summary {
    let rows = &exp.runs.rows;
    let records: Vec<Vec<&SampleRecord>> = rows.iter().map(|r| exp.records_of(r)).collect();
    let finals: Vec<Option<usize>> = rows
        .iter()
        .zip(&records)
        .map(|(r, recs)| final_step(r, recs))
        .collect();
    let final_records: Vec<Vec<&SampleRecord>> = records
        .iter()
        .zip(&finals)
        .map(|(recs, f)| {
            recs.iter()
                .filter(|r| Some(r.step) == *f)
                .copied()
                .collect()
        })
        .collect();

    let mut per_completion: Vec<String> = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    for r in rows {
        union_into(&mut per_completion, &r.columns);
        union_into(&mut metrics, r.metrics.iter().map(|(name, _)| name));
    }
    let (judges, others): (Vec<String>, Vec<String>) = per_completion
        .into_iter()
        .partition(|c| c.starts_with(JUDGE_PREFIX));
    let text = final_records.iter().any(|recs| has_text(recs));

    // A run-level metric named like a per-completion column keeps its value
    // under a distinct header rather than hiding either.
    let metric_header = |m: &String| {
        if judges.contains(m) || others.contains(m) {
            format!("{m} (run)")
        } else {
            m.clone()
        }
    };
    let mut columns: Vec<String> = judges.clone();
    columns.extend(metrics.iter().map(metric_header));
    columns.extend(others.iter().cloned());
    if text {
        columns.extend(["distinct_1".to_string(), "distinct_2".to_string()]);
    }

    let seed_row =
        |i: usize| -> SummaryRow {
            let r = &rows[i];
            let column_cell = |c: &String| match finals[i] {
                Some(step) if r.columns.contains(c) => column_estimate(&records[i], c, step)
                    .map(Cell::Est)
                    .unwrap_or(Cell::Empty),
                _ => Cell::Empty,
            };
            let mut cells: Vec<Cell> = judges.iter().map(column_cell).collect();
            cells.extend(metrics.iter().map(
                |m| match r.metrics.iter().find(|(name, _)| name == m) {
                    Some((_, Some(v))) if !v.is_nan() => Cell::Value(*v),
                    _ => Cell::Empty,
                },
            ));
            cells.extend(others.iter().map(column_cell));
            if text {
                let fin = &final_records[i];
                for n in [1, 2] {
                    cells.push(if has_text(fin) {
                        Cell::Value(distinct_n(fin.iter().map(|r| r.response.as_str()), n))
                    } else {
                        Cell::Empty
                    });
                }
            }
            SummaryRow {
                run: r.run.clone(),
                estimator: r.estimator.clone(),
                seed: SeedCell::Seed(r.seed),
                steps: Some(r.steps),
                seconds: Some(r.seconds).filter(|s| !s.is_nan()),
                cells,
            }
        };

    let mut out = Vec::new();
    for (_, idx) in groups(rows) {
        let seed_rows: Vec<SummaryRow> = idx.iter().map(|&i| seed_row(i)).collect();
        let aggregate = (seed_rows.len() > 1).then(|| aggregate_row(&seed_rows));
        out.extend(seed_rows);
        out.extend(aggregate);
    }
    Summary { columns, rows: out }
}

/// The mean over seeds of one run's rows: each value is `across_seeds` of
/// the per-seed means (a Student-t interval); one seed's value stands alone.
fn aggregate_row(seed_rows: &[SummaryRow]) -> SummaryRow {
    let first = &seed_rows[0];
    let cells = (0..first.cells.len())
        .map(|j| {
            let values: Vec<f64> = seed_rows.iter().filter_map(|r| r.cells[j].mean()).collect();
            match values.as_slice() {
                [] => Cell::Empty,
                [v] => Cell::Value(*v),
                vs => Cell::Est(across_seeds(vs)),
            }
        })
        .collect();
    let seconds: Vec<f64> = seed_rows.iter().filter_map(|r| r.seconds).collect();
    SummaryRow {
        run: first.run.clone(),
        estimator: first.estimator.clone(),
        seed: SeedCell::MeanOf(seed_rows.len()),
        steps: first
            .steps
            .filter(|s| seed_rows.iter().all(|r| r.steps == Some(*s))),
        seconds: (!seconds.is_empty()).then(|| seconds.iter().sum::<f64>() / seconds.len() as f64),
        cells,
    }
}

/// Full precision (`{}`), empty for NaN.
fn exact(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else {
        v.to_string()
    }
}

/// Four decimals, empty for NaN.
pub fn pretty(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else {
        format!("{v:.4}")
    }
}

/// `0.4297 [0.3800, 0.4800]`.
pub fn pretty_estimate(e: &Estimate) -> String {
    if e.mean.is_nan() {
        String::new()
    } else {
        format!("{} [{}, {}]", pretty(e.mean), pretty(e.lo), pretty(e.hi))
    }
}

fn pretty_cell(c: &Cell) -> String {
    match c {
        Cell::Empty => String::new(),
        Cell::Value(v) => pretty(*v),
        Cell::Est(e) => pretty_estimate(e),
    }
}

fn seed_text(s: &SeedCell) -> String {
    match s {
        SeedCell::Seed(Some(s)) => s.to_string(),
        SeedCell::Seed(None) => String::new(),
        SeedCell::MeanOf(n) => format!("mean of {n}"),
    }
}

/// A column gets `_lo`, `_hi`, `_se` in the CSV when any of its cells has an
/// interval.
fn has_interval(rows: &[SummaryRow], j: usize) -> bool {
    rows.iter().any(|r| matches!(r.cells[j], Cell::Est(_)))
}

fn csv_bytes(header: &[String], rows: &[Vec<String>]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("writing CSV: {}", e.error()))
}

/// `summary.csv`: full precision, `c`, `c_lo`, `c_hi`, `c_se` per interval column.
pub fn summary_csv(s: &Summary) -> anyhow::Result<Vec<u8>> {
    let intervals: Vec<bool> = (0..s.columns.len())
        .map(|j| has_interval(&s.rows, j))
        .collect();
    let mut header: Vec<String> = ["run", "estimator", "seed", "steps", "seconds"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    for (c, &iv) in s.columns.iter().zip(&intervals) {
        header.push(c.clone());
        if iv {
            header.extend(["lo", "hi", "se"].iter().map(|x| format!("{c}_{x}")));
        }
    }
    let rows: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            let mut v = vec![
                r.run.clone(),
                r.estimator.clone(),
                seed_text(&r.seed),
                r.steps.map(|x| x.to_string()).unwrap_or_default(),
                r.seconds.map(exact).unwrap_or_default(),
            ];
            for (cell, &iv) in r.cells.iter().zip(&intervals) {
                match cell {
                    Cell::Est(e) => {
                        v.extend([exact(e.mean), exact(e.lo), exact(e.hi), exact(e.se)])
                    }
                    Cell::Value(x) => {
                        v.push(exact(*x));
                        if iv {
                            v.extend([String::new(), String::new(), String::new()]);
                        }
                    }
                    Cell::Empty => {
                        v.extend(std::iter::repeat_n(String::new(), if iv { 4 } else { 1 }))
                    }
                }
            }
            v
        })
        .collect();
    csv_bytes(&header, &rows)
}

/// The cells of the Markdown summary (also the HTML table's).
pub fn summary_cells(s: &Summary) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header: Vec<String> = ["run", "estimator", "seed", "steps", "seconds"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    header.extend(s.columns.iter().cloned());
    let rows = s
        .rows
        .iter()
        .map(|r| {
            let mut v = vec![
                r.run.clone(),
                r.estimator.clone(),
                seed_text(&r.seed),
                r.steps.map(|x| x.to_string()).unwrap_or_default(),
                r.seconds.map(|x| format!("{x:.1}")).unwrap_or_default(),
            ];
            v.extend(r.cells.iter().map(pretty_cell));
            v
        })
        .collect();
    (header, rows)
}

/// `summary.md`: what the runner prints.
pub fn summary_markdown(s: &Summary) -> String {
    let (header, rows) = summary_cells(s);
    markdown_table(&header, &rows, 2)
}

/// A Markdown table padded to column width: the first `left` columns
/// left-aligned (names), the rest right-aligned (numbers).
pub fn markdown_table(header: &[String], rows: &[Vec<String>], left: usize) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count(), 1])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < left {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", parts.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < left {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// The cross-experiment table: methods as rows, `<experiment> · <judge>`
/// as columns, each cell a win rate against gold with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossTable {
    pub columns: Vec<String>,
    /// `(method, one cell per column)`.
    pub rows: Vec<(String, Vec<Option<Estimate>>)>,
}

/// Builds the cross-experiment table from `(experiment name, summary)`
/// pairs, in the order given; experiments without judges add no column.
pub fn cross_table(experiments: &[(String, &Summary)]) -> CrossTable {
    let mut columns = Vec::new();
    // (experiment, column index in its summary) per table column.
    let mut sources: Vec<(usize, usize)> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for (e, (name, s)) in experiments.iter().enumerate() {
        for (j, c) in s.columns.iter().enumerate() {
            if let Some(judge) = c.strip_prefix(JUDGE_PREFIX) {
                columns.push(format!("{name} · {judge}"));
                sources.push((e, j));
            }
        }
    }
    for (e, (_, s)) in experiments.iter().enumerate() {
        if sources.iter().any(|(se, _)| *se == e) {
            for run in s.runs() {
                if !methods.iter().any(|m| m == run) {
                    methods.push(run.to_string());
                }
            }
        }
    }
    let rows = methods
        .into_iter()
        .map(|m| {
            let cells: Vec<Option<Estimate>> = sources
                .iter()
                .map(|&(e, j)| {
                    experiments[e]
                        .1
                        .representative(&m)
                        .and_then(|r| match r.cells[j] {
                            Cell::Est(est) => Some(est),
                            Cell::Value(v) => Some(across_seeds(&[v])),
                            Cell::Empty => None,
                        })
                })
                .collect();
            (m, cells)
        })
        // A method no judge saw (a reference row) has nothing to show here.
        .filter(|(_, cells)| cells.iter().any(Option::is_some))
        .collect();
    CrossTable { columns, rows }
}

pub fn cross_markdown(t: &CrossTable) -> String {
    let mut header = vec!["method".to_string()];
    header.extend(t.columns.iter().cloned());
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|(m, cells)| {
            let mut v = vec![m.clone()];
            v.extend(
                cells
                    .iter()
                    .map(|c| c.as_ref().map(pretty_estimate).unwrap_or_default()),
            );
            v
        })
        .collect();
    markdown_table(&header, &rows, 1)
}

pub fn cross_csv(t: &CrossTable) -> anyhow::Result<Vec<u8>> {
    let mut header = vec!["method".to_string()];
    for c in &t.columns {
        header.push(c.clone());
        header.extend(["lo", "hi", "se"].iter().map(|x| format!("{c}_{x}")));
    }
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|(m, cells)| {
            let mut v = vec![m.clone()];
            for c in cells {
                match c {
                    Some(e) => v.extend([exact(e.mean), exact(e.lo), exact(e.hi), exact(e.se)]),
                    None => v.extend(std::iter::repeat_n(String::new(), 4)),
                }
            }
            v
        })
        .collect();
    csv_bytes(&header, &rows)
}
