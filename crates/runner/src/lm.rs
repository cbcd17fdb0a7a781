//! `runner logprobs` and `runner sample`: score and sample pretrained
//! language models (an HF directory or a Llama `.gguf` file); `runner bench`
//! is in bench.rs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use align_core::io::{check_writable, read_jsonl_numbered, AtomicFile};
use align_core::logprob::policy_logprobs;
use align_core::sampling::{sample, SampleBatch};
use align_core::task::Prompt;
use align_core::{DeviceChoice, SamplingConfig};
use align_models::tokenizer::{ChatMessage, TextTokenizer};
use align_models::{DType, LanguageModel};
use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

/// Where the model runs and in what precision.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// HF model directory (config.json, safetensors, tokenizer.json) or a Llama .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Parameter dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// auto (CUDA when present), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// LibTorch intra-op threads (default: LibTorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl ModelArgs {
    pub(crate) fn load(&self) -> anyhow::Result<(LanguageModel, Device)> {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        let device = self.device.resolve()?;
        let lm = align_models::load(&self.model, self.dtype, device)?;
        Ok((lm, device))
    }
}

/// The error for a model output that is NaN or infinite: `what` (at
/// `at`, the input file and line) under the model `model`.
fn not_finite(at: String, model: &std::path::Path, what: String) -> anyhow::Error {
    anyhow::anyhow!(
        "{at}: the model {} gives {what}, which is not finite: its weights or activations \
         hold NaN or infinities (check the checkpoint; with --dtype f16 or bf16, try f32)",
        model.display()
    )
}

pub(crate) fn tokenizer(lm: &LanguageModel) -> anyhow::Result<&TextTokenizer> {
    lm.tokenizer.as_ref().with_context(|| {
        format!(
            "{}: no tokenizer.json (needed to turn text into tokens)",
            lm.source.display()
        )
    })
}

#[derive(Args, Debug)]
pub struct LogprobsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL, one `{"prompt": str, "completion": str}` per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    prompt: String,
    completion: String,
}

#[derive(Serialize)]
struct LogprobLine {
    logprob: f64,
    tokens: usize,
}

/// `log p(completion | prompt)` per line: the prompt is tokenised with the
/// tokenizer's usual special tokens, the completion without any, and the
/// completion ids are appended to the prompt's. A log-prob that is not
/// finite is an error naming the model and the input line, and nothing is
/// written.
pub fn logprobs(args: &LogprobsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let lines: Vec<(usize, PairLine)> = read_jsonl_numbered(&args.input)?;
    let (lm, device) = args.model.load()?;
    let tok = tokenizer(&lm)?;
    let _guard = tch::no_grad_guard();
    let mut rows = Vec::with_capacity(lines.len());
    let mut numbers = Vec::with_capacity(lines.len());
    for (line, l) in &lines {
        let p = tok.encode(&l.prompt, true)?;
        let c = tok.encode(&l.completion, false)?;
        if p.is_empty() && !c.is_empty() {
            bail!(
                "{}:{line}: the prompt has no tokens, so the first completion token has no context to be scored in",
                args.input.display(),
            );
        }
        rows.push((Prompt { ids: p, text: None }, c));
        numbers.push(*line);
    }
    let per = args.batch_size.max(1);
    let mut text = String::new();
    for (chunk, numbers) in rows.chunks(per).zip(numbers.chunks(per)) {
        let longest = chunk
            .iter()
            .map(|(p, c)| p.ids.len() + c.len())
            .max()
            .unwrap_or(0);
        let lps = if longest < 2 {
            // Nothing is scored: no completion token has a context.
            vec![0.0; chunk.len()]
        } else {
            let (prompts, completions): (Vec<Prompt>, Vec<Vec<i64>>) =
                chunk.iter().cloned().unzip();
            let batch = SampleBatch::from_pairs(&prompts, &completions, device);
            Vec::<f64>::try_from(
                policy_logprobs(lm.policy.as_ref(), &batch)
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu),
            )?
        };
        for (((_, c), logprob), number) in chunk.iter().zip(lps).zip(numbers) {
            if !logprob.is_finite() {
                return Err(not_finite(
                    format!("{}:{number}", args.input.display()),
                    &args.model.model,
                    format!("the completion the log-probability {logprob}"),
                ));
            }
            let line = LogprobLine {
                logprob,
                tokens: c.len(),
            };
            text += &serde_json::to_string(&line)?;
            text.push('\n');
        }
    }
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL, one `{"prompt": str}` per line.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: i64,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: i64,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<i64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output JSONL, one line per sample.
    #[arg(long)]
    pub out: PathBuf,
    /// Wrap each prompt as a user turn with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Always generate max_new_tokens (do not stop at EOS).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Prompts per sampling call (each call holds prompts × n rows).
    #[arg(long, default_value_t = 1)]
    pub prompts_per_batch: usize,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: String,
}

#[derive(Serialize)]
struct SampleLine<'a> {
    prompt_index: usize,
    sample_index: usize,
    prompt: &'a str,
    completion: String,
    token_ids: Vec<i64>,
    /// Completion tokens, EOS included.
    tokens: usize,
    /// Stopped at EOS (rather than at max_new_tokens).
    finished: bool,
    /// log-density under the exact sampling distribution (after temperature/top-k/top-p).
    proposal_logp: f64,
    /// log-density under the unmodified model.
    model_logp: f64,
}

/// Prompt ids for `text`: chat-formatted, or with the usual special tokens.
pub(crate) fn prompt_ids(tok: &TextTokenizer, text: &str, chat: bool) -> anyhow::Result<Vec<i64>> {
    Ok(if chat {
        tok.encode_chat(&[ChatMessage::user(text)])?
    } else {
        tok.encode(text, true)?
    })
}

pub fn sample_cmd(args: &SampleArgs) -> anyhow::Result<()> {
    let config = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    };
    if let Err((key, msg)) = config.validate() {
        bail!("--{}: {msg}", key.replace('_', "-"));
    }
    if args.n < 1 || args.max_new_tokens < 1 {
        bail!("--n and --max-new-tokens must be ≥ 1");
    }
    // Before the model loads: a bad --out fails now, not after sampling.
    check_writable(&args.out).context("--out")?;
    let numbered: Vec<(usize, PromptLine)> = read_jsonl_numbered(&args.prompts)?;
    let (numbers, lines): (Vec<usize>, Vec<PromptLine>) = numbered.into_iter().unzip();
    let (lm, _) = args.model.load()?;
    let tok = tokenizer(&lm)?;
    let eos = if args.ignore_eos {
        None
    } else {
        tok.eos_token_id()
    };
    let prompts = lines
        .iter()
        .map(|l| {
            Ok(Prompt {
                ids: prompt_ids(tok, &l.prompt, args.chat)?,
                text: Some(l.prompt.clone()),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(i) = prompts.iter().position(|p| p.ids.is_empty()) {
        bail!(
            "{}:{}: the prompt has no tokens",
            args.prompts.display(),
            numbers[i]
        );
    }
    let mut out = AtomicFile::create(&args.out)?;
    let bar = align_core::progress::bar(
        !args.quiet,
        (prompts.len() as u64) * args.n as u64,
        "sample",
        "samples",
    );
    let start = Instant::now();
    let mut new_tokens = 0usize;
    let per = args.prompts_per_batch.max(1);
    for (c, chunk) in prompts.chunks(per).enumerate() {
        let seed = args.seed.wrapping_add(c as u64);
        let batch = sample(
            lm.policy.as_ref(),
            chunk,
            args.n,
            args.max_new_tokens,
            eos,
            &config,
            seed,
        );
        let proposal = Vec::<f64>::try_from(
            batch
                .proposal_logp
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?;
        let model = Vec::<f64>::try_from(
            batch
                .model_logp
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?;
        for (row, ids) in batch.completions().into_iter().enumerate() {
            let p = batch.prompt_index[row];
            let (q, m) = (proposal[row], model[row]);
            if !(q.is_finite() && m.is_finite()) {
                return Err(not_finite(
                    format!("{}:{}", args.prompts.display(), numbers[c * per + p]),
                    &args.model.model,
                    format!(
                        "sample {} the log-densities proposal_logp = {q}, model_logp = {m}",
                        row % args.n as usize
                    ),
                ));
            }
            let finished = eos.is_some() && ids.last().copied() == eos;
            let text_ids = if finished {
                &ids[..ids.len() - 1]
            } else {
                &ids[..]
            };
            new_tokens += ids.len();
            let line = SampleLine {
                prompt_index: c * per + p,
                sample_index: row % args.n as usize,
                prompt: &lines[c * per + p].prompt,
                completion: tok.decode(text_ids, false)?,
                tokens: ids.len(),
                token_ids: ids,
                finished,
                proposal_logp: q,
                model_logp: m,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        bar.inc(batch.len() as u64);
        bar.set_message(format!(
            "{:.1} tokens/s",
            new_tokens as f64 / start.elapsed().as_secs_f64()
        ));
    }
    bar.finish_and_clear();
    out.commit()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "sampled {} completions, {new_tokens} new tokens in {secs:.2} s: {:.1} tokens/s → {}",
        prompts.len() * args.n as usize,
        new_tokens as f64 / secs,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
    }

    fn model(name: &str) -> ModelArgs {
        ModelArgs {
            model: fixture(name),
            dtype: DType::F32,
            device: DeviceChoice::Cpu,
            threads: None,
        }
    }

    /// `runner logprobs` reproduces transformers 5.24.0's sequence log-probs of
    /// the pairs in each fixture's expected.json (prompt with special tokens,
    /// completion without, concatenated), batched and padded by
    /// `SampleBatch::from_pairs`.
    #[test]
    fn logprobs_match_transformers() {
        for name in [
            "tiny-llama",
            "tiny-llama-tied",
            "tiny-gpt2",
            "tiny-gpt-neox",
        ] {
            let meta: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
            )
            .unwrap();
            let pairs = meta["pairs"].as_array().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let input = dir.path().join("in.jsonl");
            let text: String = pairs
                .iter()
                .map(|p| {
                    serde_json::json!({"prompt": p["prompt"], "completion": p["completion"]})
                        .to_string()
                        + "\n"
                })
                .collect();
            std::fs::write(&input, text).unwrap();
            let mut out = Vec::new();
            let args = LogprobsArgs {
                model: model(name),
                input,
                batch_size: 2,
            };
            logprobs(&args, &mut out).unwrap();
            let lines: Vec<serde_json::Value> = String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), pairs.len());
            for (got, want) in lines.iter().zip(pairs) {
                let (g, w) = (
                    got["logprob"].as_f64().unwrap(),
                    want["logprob"].as_f64().unwrap(),
                );
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs(),
                    "{name}: {g} vs transformers {w}"
                );
                assert_eq!(got["tokens"], want["tokens"], "{name}");
            }
        }
    }

    #[test]
    fn sample_writes_one_line_per_sample_with_logprobs() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = dir.path().join("prompts.jsonl");
        std::fs::write(
            &prompts,
            "{\"prompt\": \"Hello\"}\n\n{\"prompt\": \"The quick brown fox\"}\n",
        )
        .unwrap();
        let out = dir.path().join("samples.jsonl");
        let args = SampleArgs {
            model: model("tiny-llama"),
            prompts,
            n: 3,
            max_new_tokens: 6,
            temperature: 0.7,
            top_k: Some(40),
            top_p: Some(0.9),
            seed: 5,
            out: out.clone(),
            chat: true,
            ignore_eos: false,
            prompts_per_batch: 2,
            quiet: true,
        };
        sample_cmd(&args).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["prompt_index"], i / 3);
            assert_eq!(l["sample_index"], i % 3);
            let n = l["tokens"].as_u64().unwrap();
            assert!((1..=6).contains(&n));
            assert_eq!(l["token_ids"].as_array().unwrap().len() as u64, n);
            // Filtering and temperature < 1 concentrate mass: q(y) ≥ p(y).
            assert!(
                l["proposal_logp"].as_f64().unwrap() >= l["model_logp"].as_f64().unwrap() - 1e-4
            );
        }
        // Same seed, same file.
        let first = std::fs::read_to_string(&out).unwrap();
        sample_cmd(&args).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), first);
    }

    #[test]
    fn bad_inputs_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\n",
        )
        .unwrap();
        let args = LogprobsArgs {
            model: model("tiny-llama"),
            input: input.clone(),
            batch_size: 2,
        };
        let err = logprobs(&args, &mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("{}:2: bad JSON line", input.display())),
            "{err:#}"
        );
        let args = LogprobsArgs {
            model: ModelArgs {
                model: dir.path().join("missing"),
                ..model("tiny-llama")
            },
            input: fixture("tiny-llama").join("nothing.jsonl"),
            batch_size: 2,
        };
        let err = logprobs(&args, &mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("nothing.jsonl: cannot open"),
            "{err:#}"
        );
    }
}
