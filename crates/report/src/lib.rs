//! Everything a reader sees of an experiment, recomputed from what its run
//! left on disk ([`format`]): tables with intervals ([`tables`]), plots
//! ([`plots`]) and the HTML report ([`html`]).
//!
//! Every output is a function of the input files alone (fixed bootstrap
//! seed, stable ordering, fixed float formatting, no timestamps), so
//! `runner tables` reproduces committed results byte for byte.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub mod format;
pub mod html;
pub mod plots;
pub mod stats;
pub mod sweep;
pub mod tables;

use format::{slug, write_atomic, Experiment};
use tables::Summary;

/// What [`write_experiment`] computed and wrote.
#[derive(Debug, Clone)]
pub struct Tables {
    pub experiment: String,
    pub summary: Summary,
    /// `summary.md` (what the runner prints).
    pub markdown: String,
    /// Every file written, in the order written.
    pub written: Vec<PathBuf>,
}

/// What [`write_all`] computed and wrote.
#[derive(Debug, Clone)]
pub struct AllTables {
    /// Each experiment directory (sorted by name) with its tables.
    pub experiments: Vec<(PathBuf, Tables)>,
    /// `tables.md`: methods × `<experiment> · <judge>` win rates.
    pub markdown: String,
    pub written: Vec<PathBuf>,
}

fn write(path: PathBuf, bytes: &[u8], written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    write_atomic(&path, bytes)?;
    written.push(path);
    Ok(())
}

/// Reads `dir/runs.json` and its samples and writes `summary.csv`,
/// `summary.md`, `plots/frontier.{svg,png}` (when the runs have `kl` and
/// `reward`), `plots/winrate-<judge>.{svg,png}` per judge and `report.html`.
pub fn write_experiment(dir: &Path) -> anyhow::Result<Tables> {
    let exp = Experiment::load(dir)?;
    let summary = tables::summary(&exp);
    let markdown = tables::summary_markdown(&summary);
    let mut written = Vec::new();
    write(
        dir.join("summary.csv"),
        &tables::summary_csv(&summary)?,
        &mut written,
    )?;
    write(dir.join("summary.md"), markdown.as_bytes(), &mut written)?;

    let name = &exp.runs.experiment;
    let mut inline: Vec<(String, String)> = Vec::new();
    let plots_dir = dir.join("plots");
    if let Some(curves) = plots::frontier(&exp) {
        let r = plots::frontier_plot(
            &format!("{name}: reward against KL from the prior"),
            &curves,
        )
        .with_context(|| format!("drawing the frontier of {}", dir.display()))?;
        write(
            plots_dir.join("frontier.svg"),
            r.svg.as_bytes(),
            &mut written,
        )?;
        write(plots_dir.join("frontier.png"), &r.png, &mut written)?;
        inline.push((
            "Reward against KL(π‖prior) through the evaluation steps; bars: 95% intervals."
                .to_string(),
            r.svg,
        ));
    }
    for (judge, column) in plots::judges(&summary) {
        let bars = plots::win_bars(&summary, column);
        if bars.is_empty() {
            continue;
        }
        let r = plots::win_plot(
            &format!("{name}: win rate against gold, judge {judge}"),
            &bars,
        )
        .with_context(|| format!("drawing the {judge} win rates of {}", dir.display()))?;
        let stem = format!("winrate-{}", slug(&judge));
        write(
            plots_dir.join(format!("{stem}.svg")),
            r.svg.as_bytes(),
            &mut written,
        )?;
        write(plots_dir.join(format!("{stem}.png")), &r.png, &mut written)?;
        inline.push((
            format!("Win rate against gold at the final step, judge {judge}; dashed: 0.5."),
            r.svg,
        ));
    }
    let page = html::report_html(&exp, &summary, &inline)?;
    write(dir.join("report.html"), page.as_bytes(), &mut written)?;
    Ok(Tables {
        experiment: name.clone(),
        summary,
        markdown,
        written,
    })
}

/// Runs [`write_experiment`] on every subdirectory of `root` that has a
/// `runs.json` or is a sweep's directory (merged first: [`sweep::merge`]),
/// in name order, then writes `root/tables.md` and
/// `root/tables.csv`: the cross-experiment table of win rates.
pub fn write_all(root: &Path) -> anyhow::Result<AllTables> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", root.display()))?;
    dirs.retain(|d| d.is_dir() && (d.join("runs.json").is_file() || sweep::is_sweep(d)));
    dirs.sort();
    let mut experiments = Vec::new();
    for d in dirs {
        // A sweep's jobs are merged first (refused while any is unfinished).
        if sweep::is_sweep(&d) {
            sweep::merge(&d)?;
        }
        let t = write_experiment(&d)?;
        experiments.push((d, t));
    }
    let named: Vec<(String, &Summary)> = experiments
        .iter()
        .map(|(_, t)| (t.experiment.clone(), &t.summary))
        .collect();
    let cross = tables::cross_table(&named);
    let markdown = tables::cross_markdown(&cross);
    let mut written = Vec::new();
    write(root.join("tables.md"), markdown.as_bytes(), &mut written)?;
    write(
        root.join("tables.csv"),
        &tables::cross_csv(&cross)?,
        &mut written,
    )?;
    Ok(AllTables {
        experiments,
        markdown,
        written,
    })
}
