//! Win rate against gold judged by an LLM, in the style of the DPO and BRAIn
//! papers' GPT-4 comparisons: the judge sees the prompt and two responses,
//! the policy's and the gold one, and answers with one token ("A" or "B").
//! Each pair is judged in both orders, so the verdict is position-debiased:
//! a win needs the judge to prefer the policy's response whichever way round
//! it is shown.
//!
//! Two backends: a local causal LM (the `hf` model plugin, by default the
//! SmolLM2-135M-Instruct GGUF that `cargo xtask setup` installs) read off its
//! next-token log-probs, or an OpenAI-compatible `/chat/completions` endpoint
//! (OpenAI, vLLM, llama.cpp server) read off `top_logprobs`, with a response
//! cache on disk.
//!
//! Every held-out completion is judged: limit the count with the manifest's
//! `[eval] prompts` (and `samples`), not here.
//!
//! ```toml
//! [evaluators.winrate-llm]
//! name = "gpt4o"                      # columns win_gpt4o, gpt4o_first, gpt4o_prob
//! [evaluators.winrate-llm.backend.openai]
//! model = "gpt-4o"                    # key from $OPENAI_API_KEY
//! ```
//!
//! For summaries (TL;DR), give a `template` in the style of the DPO paper's
//! "Which of the following summaries does a better job of summarizing the
//! most important points in the given forum post, without including
//! unimportant or irrelevant details?", keeping the one-letter answer.

mod cache;
mod endpoint;
mod local;
mod verdict;

use align_core::manifest::{InputPath, OutputPath};
use align_core::registry::{build_resolving, Built, ConfigDeserializer, Constructor};
use align_core::{EvalContext, Evaluation, Evaluator, HeldOut, Plugin, PluginError, Policy};
use serde::{Deserialize, Serialize};

use verdict::{render, Verdicts};

/// The default judge prompt: the DPO paper's GPT-4 dialogue comparison,
/// shortened to ask for the answer letter only (one token is read).
pub const DEFAULT_TEMPLATE: &str =
    "For the following query to a chatbot, which response is more helpful?\n\n\
Query: {prompt}\n\n\
Response {first_label}:\n{first}\n\n\
Response {second_label}:\n{second}\n\n\
State only \"{first_label}\" or \"{second_label}\" to indicate which response is more helpful.\n\
More helpful:";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WinrateLlmConfig {
    /// The judge's column name: `win_<name>`, `<name>_first`, `<name>_prob`.
    #[serde(default = "default_name")]
    pub name: String,
    /// The judge prompt. Placeholders: `{prompt}`, `{first}`, `{second}` (the
    /// two responses) and `{first_label}`, `{second_label}` (the choices).
    #[serde(default = "default_template")]
    pub template: String,
    /// The answers naming the first and the second response.
    #[serde(default = "default_choices")]
    pub choices: Vec<String>,
    /// Judge only the first this many held-out completions (the rest get no
    /// verdict): an LLM judge costs far more than a reward model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completions: Option<usize>,
    #[serde(default)]
    pub backend: Backend,
}

/// Where the judge runs: exactly one of `local = { … }` or `openai = { … }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Local(LocalConfig),
    Openai(OpenAiConfig),
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Local(LocalConfig::default())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// An HF model directory or a `.gguf` file (built by the `hf` model plugin).
    #[serde(default = "default_local_path")]
    pub path: InputPath,
    /// Parameter dtype: "f32", "bf16" or "f16".
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Judge prompts per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            path: default_local_path(),
            dtype: default_dtype(),
            batch_size: default_batch(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root; requests go to `<base_url>/chat/completions`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_model")]
    pub model: String,
    /// The environment variable holding the API key (not needed for a
    /// loopback `base_url`, e.g. a local vLLM or llama.cpp server).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    #[serde(default = "default_rpm")]
    pub requests_per_minute: f64,
    /// Retries after a connection error, a 429 or a 5xx.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first retry's wait in seconds (doubling after each), unless the
    /// server sends `Retry-After`.
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Directory of cached responses (shared by runs and processes).
    #[serde(default = "default_cache")]
    pub cache: OutputPath,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: default_base_url(),
            model: default_model(),
            api_key_env: default_key_env(),
            requests_per_minute: default_rpm(),
            retries: default_retries(),
            backoff_s: default_backoff(),
            timeout_s: default_timeout(),
            cache: default_cache(),
        }
    }
}

fn default_name() -> String {
    "llm".into()
}
fn default_template() -> String {
    DEFAULT_TEMPLATE.into()
}
fn default_choices() -> Vec<String> {
    vec!["A".into(), "B".into()]
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_batch() -> usize {
    4
}
fn default_base_url() -> String {
    "https://api.openai.com/v1".into()
}
fn default_model() -> String {
    "gpt-4o".into()
}
fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_rpm() -> f64 {
    60.0
}
fn default_retries() -> u32 {
    5
}
fn default_backoff() -> f64 {
    1.0
}
fn default_timeout() -> f64 {
    60.0
}

/// A path as a manifest would write it (`~/` expanded, not yet resolved).
fn written<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
    T::deserialize(de).expect("paths deserialize from any string")
}
fn default_local_path() -> InputPath {
    written("~/.cache/brain-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}
fn default_cache() -> OutputPath {
    written("~/.cache/brain-rs/judge-cache")
}

/// A judge: for each rendered judge prompt, the probability that it answers
/// with the first choice rather than the second.
trait Judge: Send + Sync {
    fn prob_first(&self, ctx: &EvalContext, prompts: &[String]) -> anyhow::Result<Vec<f64>>;
}

pub struct WinrateLlm {
    name: String,
    template: String,
    choices: [String; 2],
    max_completions: Option<usize>,
    judge: Box<dyn Judge>,
}

impl Evaluator for WinrateLlm {
    fn evaluate(
        &self,
        ctx: &EvalContext,
        _policy: &dyn Policy,
        held_out: Option<&HeldOut>,
    ) -> anyhow::Result<Evaluation> {
        let h = held_out.expect("winrate-llm reads held-out completions");
        let texts = h.batch.texts.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "winrate-llm judges text, but the policy's completions were not decoded: \
                 the policy has no tokenizer (use a text model such as `[model.hf]`)"
            )
        })?;
        let gold = h.gold_rows().ok_or_else(|| {
            anyhow::anyhow!("winrate-llm: the task has no gold responses to compare with")
        })?;
        let gold = gold.texts.ok_or_else(|| {
            anyhow::anyhow!("winrate-llm: the gold responses were not decoded (no tokenizer)")
        })?;
        let all = texts.len();
        let judged = self.max_completions.unwrap_or(all).min(all);
        let (texts, gold) = (&texts[..judged], &gold[..judged]);
        // Both orders: the policy's response first, then the gold one first.
        let [a, b] = &self.choices;
        let mut prompts = Vec::with_capacity(2 * texts.len());
        for (t, g) in texts.iter().zip(gold) {
            prompts.push(render(
                &self.template,
                &t.prompt,
                &t.completion,
                &g.completion,
                a,
                b,
            ));
        }
        for (t, g) in texts.iter().zip(gold) {
            prompts.push(render(
                &self.template,
                &t.prompt,
                &g.completion,
                &t.completion,
                a,
                b,
            ));
        }
        let p = self.judge.prob_first(ctx, &prompts)?;
        let (policy_first, gold_first) = p.split_at(texts.len());
        let v = Verdicts::from_orders(policy_first, gold_first);
        // Completions past `max_completions` have no verdict (NaN: left out).
        let pad = |mut xs: Vec<f64>| {
            xs.resize(all, f64::NAN);
            xs
        };
        let mut e = Evaluation::default();
        e.column(format!("win_{}", self.name), pad(v.win));
        e.column(format!("{}_first", self.name), pad(v.first));
        e.column(format!("{}_prob", self.name), pad(v.prob));
        Ok(e)
    }
}

fn check_template(template: &str) -> Result<(), PluginError> {
    for slot in ["{prompt}", "{first}", "{second}"] {
        if !template.contains(slot) {
            return Err(PluginError::invalid(
                "template",
                format!("the judge prompt has no `{slot}` placeholder; it needs `{{prompt}}`, `{{first}}` and `{{second}}`"),
            ));
        }
    }
    Ok(())
}

fn check_choices(choices: &[String]) -> Result<[String; 2], PluginError> {
    match choices {
        [a, b] if !a.trim().is_empty() && !b.trim().is_empty() && a.trim() != b.trim() => {
            Ok([a.trim().to_string(), b.trim().to_string()])
        }
        _ => Err(PluginError::invalid(
            "choices",
            "give two distinct non-empty answers, first response's then second's, e.g. `[\"A\", \"B\"]`",
        )),
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Evaluator>, PluginError> {
    build_resolving(de, |c: &mut WinrateLlmConfig, base| {
        crate::check_judge_name("name", &c.name)?;
        check_template(&c.template)?;
        let choices = check_choices(&c.choices)?;
        if c.max_completions == Some(0) {
            return Err(PluginError::invalid(
                "max_completions",
                "must be ≥ 1 (or left out to judge every completion)",
            ));
        }
        let judge: Box<dyn Judge> = match &mut c.backend {
            Backend::Local(l) => Box::new(local::LocalJudge::new(l, base, &choices)?),
            Backend::Openai(o) => {
                base.resolve_output(&mut o.cache);
                Box::new(endpoint::EndpointJudge::new(o, &choices)?)
            }
        };
        Ok(Box::new(WinrateLlm {
            name: c.name.clone(),
            template: c.template.clone(),
            choices,
            max_completions: c.max_completions,
            judge,
        }) as Box<dyn Evaluator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "winrate-llm",
        description: "win rate vs gold on held-out prompts judged by an LLM (local model or OpenAI-compatible endpoint), both orders, ties count half",
        constructor: Constructor::Evaluator(construct),
    }
}
