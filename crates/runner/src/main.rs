//! `runner MANIFEST.toml [--set key.path=value …] [--out DIR]` runs an
//! experiment; `runner list` prints every registered plugin.

use std::path::PathBuf;
use std::process::ExitCode;

use align_core::manifest::Manifest;
use align_core::registry::Registry;
use align_rewards::pipeline::{self, RmManifest};
use clap::{Parser, Subcommand};

mod lm;
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
}

#[derive(Subcommand)]
enum Command {
    /// List every registered plugin by kind.
    List,
    /// Score completions: one `{"logprob", "tokens"}` JSON line per input line.
    Logprobs(lm::LogprobsArgs),
    /// Sample completions with their log-densities into a JSONL file.
    Sample(lm::SampleArgs),
    /// Sampling throughput (tokens/s) of a model.
    Bench(lm::BenchArgs),
    /// Train a scalar-head reward model (manifest) and write it as an HF directory.
    TrainRm(TrainRmArgs),
    /// Add `reward` and `log_goodness` to every record of a sample file.
    Score(rm::ScoreArgs),
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
    let cli = Cli::parse();
    let lm_result = match &cli.command {
        Some(Command::List) => {
            print!("{}", Registry::global().listing());
            return ExitCode::SUCCESS;
        }
        Some(Command::Logprobs(a)) => Some(lm::logprobs(a, &mut std::io::stdout().lock())),
        Some(Command::Sample(a)) => Some(lm::sample_cmd(a)),
        Some(Command::Bench(a)) => Some(lm::bench(a)),
        Some(Command::TrainRm(a)) => match RmManifest::load(&a.manifest, &a.overrides) {
            // A bad manifest stops before any work, as an experiment's does.
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            Ok(m) => Some(train_rm(a, &m)),
        },
        Some(Command::Score(a)) => Some(rm::score(a)),
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
        eprintln!("error: give a manifest, e.g. `runner experiments/exact.toml`, or `runner list`");
        return ExitCode::from(2);
    };
    let manifest = match Manifest::load(&path, &cli.overrides) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let out = cli
        .out
        .unwrap_or_else(|| PathBuf::from("results").join(&manifest.name));
    eprintln!(
        "running {} ({} runs) → {}",
        path.display(),
        manifest.runs.len(),
        out.display()
    );
    match runner::run(&manifest, &out, !cli.quiet) {
        Ok(outcome) => {
            print!("{}", runner::report::markdown(&outcome.rows));
            eprintln!("wrote {}", outcome.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
