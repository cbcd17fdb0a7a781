//! `runner MANIFEST.toml [--set key.path=value …] [--out DIR] [--dry-run]`
//! runs an experiment (its stages, runs and evaluation); `runner tables
//! results/` recomputes every table, plot and report from what is on disk;
//! `runner list` prints every registered plugin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use align_core::manifest::Manifest;
use align_core::registry::Registry;
use align_rewards::pipeline::{self, RmManifest};
use clap::{Parser, Subcommand};

mod bench;
mod lm;
mod nccl_check;
mod rm;

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Align language models from reward feedback: BRAIn, DPO and friends"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Experiment manifest (TOML).
    manifest: Option<PathBuf>,
    /// Override a manifest value, e.g. `--set train.steps=50` or `--set runs.0.lr=0.01`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// Output directory (default: results/<experiment name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
    /// Check the manifest, its stages, files and settings, print the plan and
    /// its work; train nothing.
    #[arg(long)]
    dry_run: bool,
    /// Continue an interrupted run of this manifest in its output directory:
    /// finished runs are kept, the others go on from their last checkpoint
    /// (`train.checkpoint_every`).
    #[arg(long, conflicts_with = "dry_run")]
    resume: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List every registered plugin by kind.
    List,
    /// Check a manifest and print its plan without training (= `--dry-run`).
    Check(CheckArgs),
    /// Recompute every table, plot and report under a results directory
    /// (one experiment, or a folder of them plus the cross-experiment table)
    /// from the saved samples and metrics, without training.
    Tables(TablesArgs),
    /// Score completions: one `{"logprob", "tokens"}` JSON line per input line.
    Logprobs(lm::LogprobsArgs),
    /// Sample completions with their log-densities into a JSONL file.
    Sample(lm::SampleArgs),
    /// Sampling throughput (tokens/s) of a model.
    Bench(bench::BenchArgs),
    /// Time whole training iterations of a manifest's run (one JSON line).
    BenchIteration(bench::IterationArgs),
    /// Time the training step alone on fixed batches, with FLOPs and the GEMM rate.
    BenchStep(bench::StepArgs),
    /// Train a scalar-head reward model (manifest) and write it as an HF directory.
    TrainRm(TrainRmArgs),
    /// Add `reward` and `log_goodness` to every record of a sample file.
    Score(rm::ScoreArgs),
    /// Split a manifest into indexed jobs (runs × grid × seeds) for array
    /// jobs: `--list`, `--count`, or run job `--index I` (default
    /// $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX); `runner tables DIR`
    /// merges them.
    Sweep(runner::sweep::SweepArgs),
    /// Check the NCCL path on this machine's GPU: exact bf16 and f32 sums
    /// over the ranks (one without `mpiexec`), and a timed bf16 sum (one
    /// JSON line per rank; needs a build with `--features nccl`).
    NcclCheck(nccl_check::NcclCheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    manifest: PathBuf,
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
}

#[derive(clap::Args)]
struct TablesArgs {
    /// `results/` (every experiment in it), `results/<experiment>`, or a
    /// sweep's directory (`runner sweep`: its jobs are merged first).
    #[arg(default_value = "results")]
    dir: PathBuf,
}

#[derive(clap::Args)]
struct TrainRmArgs {
    /// Reward-model manifest (TOML), e.g. experiments/rm-sentiment-classifier.toml.
    manifest: PathBuf,
    /// Override a manifest value, e.g. `--set train.epochs=1`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// Results directory (default: results/<name>).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

fn train_rm(a: &TrainRmArgs, m: &RmManifest) -> anyhow::Result<()> {
    let results = a
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&m.name));
    let outcome = pipeline::train_rm(m, &results, !a.quiet)?;
    print!("{}", pipeline::markdown(m, &outcome));
    eprintln!(
        "wrote {} and {}",
        outcome.model_dir.display(),
        outcome.out_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // Under `mpiexec -n N` (a build with `--features mpi`): one rank of a
    // data-parallel run; MPI stays open until `_mpi` drops, as main returns.
    let _mpi = match align_mpi::init() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let code = cli_main();
    let world = align_distributed::world();
    if code != ExitCode::SUCCESS && world.size() > 1 {
        // The other ranks may be waiting in a collective: end them too.
        world.abort(1);
    }
    code
}

fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    let lm_result = match &cli.command {
        Some(Command::List) => {
            print!("{}", Registry::global().listing());
            return ExitCode::SUCCESS;
        }
        Some(Command::Logprobs(a)) => Some(lm::logprobs(a, &mut std::io::stdout().lock())),
        Some(Command::Sample(a)) => Some(lm::sample_cmd(a)),
        Some(Command::Bench(a)) => Some(bench::bench(a, &mut std::io::stdout().lock())),
        Some(Command::BenchIteration(a)) => {
            Some(bench::bench_iteration(a, &mut std::io::stdout().lock()))
        }
        Some(Command::BenchStep(a)) => Some(bench::bench_step(a, &mut std::io::stdout().lock())),
        Some(Command::TrainRm(a)) => match RmManifest::load(&a.manifest, &a.overrides) {
            // A bad manifest stops before any work, as an experiment's does.
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Ok(m) => Some(train_rm(a, &m)),
        },
        Some(Command::Score(a)) => Some(rm::score(a)),
        Some(Command::NcclCheck(a)) => Some(nccl_check::nccl_check(a)),
        Some(Command::Sweep(a)) => return runner::sweep::main(a),
        Some(Command::Tables(a)) => Some(tables(&a.dir)),
        Some(Command::Check(a)) => {
            let how = How {
                dry_run: true,
                quiet: true,
                resume: false,
            };
            return experiment(&a.manifest, &a.overrides, None, how);
        }
        None => None,
    };
    if let Some(result) = lm_result {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = cli.manifest else {
        eprintln!(
            "error: give a manifest, e.g. `runner experiments/quickstart.toml`, or `runner list`"
        );
        return ExitCode::from(2);
    };
    let how = How {
        dry_run: cli.dry_run,
        quiet: cli.quiet,
        resume: cli.resume,
    };
    experiment(&path, &cli.overrides, cli.out, how)
}

/// How `experiment` runs a manifest.
#[derive(Clone, Copy)]
struct How {
    dry_run: bool,
    quiet: bool,
    resume: bool,
}

/// The manifest's `name` as written (before its plugins are built, which may
/// need the stages): the default output directory is `results/<name>`.
fn manifest_name(path: &Path, overrides: &[String]) -> Option<String> {
    if let Some(v) = overrides.iter().find_map(|o| o.strip_prefix("name=")) {
        return Some(v.trim_matches('"').to_string());
    }
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table.get("name")?.as_str().map(str::to_string)
}

fn tables(dir: &Path) -> anyhow::Result<()> {
    if align_report::sweep::is_sweep(dir) {
        let m = align_report::sweep::merge(dir)?;
        eprintln!(
            "merged the {} jobs of the sweep in {}",
            m.jobs,
            dir.display()
        );
    }
    if dir.join("runs.json").is_file() {
        let t = align_report::write_experiment(dir)?;
        print!("{}", t.markdown);
        eprintln!("rewrote the tables, plots and report in {}", dir.display());
    } else {
        let all = align_report::write_all(dir)?;
        print!("{}", all.markdown);
        eprintln!(
            "rewrote {} experiment(s) under {} and {}",
            all.experiments.len(),
            dir.display(),
            dir.join("tables.md").display()
        );
    }
    Ok(())
}

/// Stages, then the manifest's runs (or, with `dry_run`, only the checks).
fn experiment(path: &Path, overrides: &[String], out: Option<PathBuf>, how: How) -> ExitCode {
    let How {
        dry_run,
        quiet,
        resume,
    } = how;
    let fail = |e: anyhow::Error| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    };
    // The output directory is locked (and so known writable) before any
    // work: a second writer, or a directory that cannot be written, fails
    // here, not after the stages have trained. A manifest without a
    // readable name is the loader's to report, below.
    let early = out.clone().or_else(|| {
        manifest_name(path, overrides)
            // Any other name is the loader's to refuse, with its location.
            .filter(|n| align_core::manifest::limits::plain_name(n).is_ok())
            .map(|n| PathBuf::from("results").join(n))
    });
    let mut locked = None;
    // Data parallel: rank 0 alone locks and writes; the others read.
    let root = align_distributed::world().is_root();
    if let (false, Some(dir), true) = (dry_run, &early, root) {
        match runner::outdir::OutDir::lock(dir) {
            Ok(l) => locked = Some(l),
            Err(e) => return fail(e),
        }
    }
    // Stages come first: the plugins read what they write.
    let stages = match Manifest::stages(path, overrides)
        .and_then(|s| runner::stages::load(&s.reward_models))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let stage_lines = if dry_run {
        match runner::stages::plan_reward_models(&stages) {
            Ok((lines, true)) => lines,
            Ok((lines, false)) => {
                for l in &lines {
                    println!("stage: {l}");
                }
                println!(
                    "The rest of the manifest reads what these stages write: run it without --dry-run (the stages train first), or train them with `runner train-rm MANIFEST`, then check again."
                );
                return ExitCode::SUCCESS;
            }
            Err(e) => return fail(e),
        }
    } else {
        // Rank 0 trains the stages; the other ranks then read their caches.
        match align_distributed::root_first(|| runner::stages::reward_models(&stages, !quiet)) {
            Ok(lines) => {
                for l in &lines {
                    eprintln!("stage: {l}");
                }
                lines
            }
            Err(e) => return fail(e),
        }
    };
    let manifest = match Manifest::load(path, overrides) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if dry_run {
        return match runner::check::check(&manifest, &stage_lines) {
            Ok(plan) => {
                print!("{plan}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    if !root {
        let dir = out
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(&manifest.name));
        return match runner::run_follower(&manifest, &dir) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    let mut locked = match locked {
        Some(l) => l,
        None => {
            let dir = out.unwrap_or_else(|| PathBuf::from("results").join(&manifest.name));
            match runner::outdir::OutDir::lock(&dir) {
                Ok(l) => l,
                Err(e) => return fail(e),
            }
        }
    };
    eprintln!(
        "{} {} ({} runs × {} seed(s)) → {}",
        if resume { "resuming" } else { "running" },
        path.display(),
        manifest.runs.len(),
        manifest.seeds.len(),
        locked.path().display()
    );
    match runner::run_locked(&manifest, &mut locked, !quiet, resume) {
        Ok(outcome) => {
            print!("{}", outcome.markdown);
            eprintln!(
                "wrote {} (report: {})",
                outcome.out_dir.display(),
                outcome.out_dir.join("report.html").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
