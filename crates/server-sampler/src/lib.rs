//! Sampling on inference servers: the prompts go as token ids to one or more
//! vLLM / SGLang (`POST /v1/completions`) or llama.cpp (`POST /completion`)
//! servers, and come back as a [`SampleBatch`] laid out as
//! [`align_core::sampling::sample`] lays it out (rows prompt-major, `n` per
//! prompt, prompts left-padded, completions right-padded, the end token
//! included), whose log-densities are the trainer's own:
//!
//! - `proposal_logp` is recomputed by the trainer's policy under the
//!   [`SamplingConfig`] used (temperature, top-k, top-p) with
//!   [`align_core::logprob::sampling_logprobs`], 0 for greedy decoding, as the
//!   in-process sampler records it;
//! - `model_logp` is the policy's temperature-1 log-density (the same tensor
//!   as `proposal_logp` for plain sampling, as in the in-process sampler).
//!
//! The servers' own values (the sum of their per-token log-probs) are kept
//! beside them in a [`ServerReport`] with their disagreement (largest and
//! mean absolute per-sequence difference). A difference beyond
//! `tolerance + tolerance_per_token · tokens` is an error naming the server,
//! the prompt and both values (or a warning, `on_disagreement = "warn"`): a
//! server sampling from other weights than the trainer's proposal, or from
//! another distribution, is caught at the first batch.
//!
//! Work is spread over the servers (`concurrency` requests in flight each,
//! `prompts_per_request` prompts per request). A dropped connection, a
//! timeout, HTTP 408/429/5xx or a body cut short is retried on the same
//! server with exponential backoff; a server that fails `retries + 1` times
//! in a row is given up on and its work goes to the others; only the prompts
//! still missing are asked for again (a short answer asks again for the
//! prompts it left out). Each request carries a seed derived from the call's
//! seed and the request's place in the call, so the same call asks the same
//! questions whatever server answers.
//!
//! # Settings
//!
//! [`ServerSamplerConfig`] is the manifest table (`deny_unknown_fields`;
//! [`ServerSamplerConfig::validate`] names the key and the fix):
//!
//! ```toml
//! urls = ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
//! api = "openai"                 # vLLM / SGLang; "llama-cpp" for llama-server
//! model = "smollm2-135m"         # the served name of the prior
//! logprobs_mode = "processed"    # vLLM --logprobs-mode processed_logprobs; "raw" otherwise
//! timeout_s = 600
//! retries = 4
//! backoff_s = 1.0
//! prompts_per_request = 16
//! concurrency = 4                # requests in flight per server
//! tolerance = 0.1                # nats per sequence …
//! tolerance_per_token = 0.01     # … plus this per token
//! on_disagreement = "error"      # or "warn"
//! api_key_env = "VLLM_API_KEY"   # optional bearer token
//! rescore_rows = 32              # rows per recomputation forward pass
//! proposal = { proposal_model = "proposal", export_dir = "/shared/exports", reload = "vllm-lora" }
//! ```
//!
//! vLLM is started with `--logprobs-mode processed_logprobs` (for
//! `processed`), `--generation-config vllm` (no stop tokens or sampling
//! defaults from the model's `generation_config.json`; the sampler also sends
//! every setting explicitly) and, for `vllm-lora` refreshes, `--enable-lora`
//! with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Stopping is the task's
//! `eos` alone (`ignore_eos` with `stop_token_ids = [eos]`); a completion that
//! stops early at anything else is an error that says so.
//!
//! # Plugging into the batcher
//!
//! [`ServerSampler::sample`] has the signature of
//! [`align_core::sampling::sample`] plus the policy that recomputes the
//! densities, so the batcher's `draw` can call it where it calls `sample` when
//! the run's manifest has a `server` table:
//!
//! ```text
//! match &self.server {
//!     Some(s) if from_prior  => s.sample_prior(prior, prompts, count, max_new, eos, config, seed)?,
//!     Some(s)                => s.sample(proposal, prompts, count, max_new, eos, config, seed)?,
//!     None                   => sample(policy, prompts, count, max_new, eos, config, seed),
//! }
//! ```
//!
//! and call [`ServerSampler::refresh`] with the frozen proposal at each
//! proposal refresh (`Batcher::set_proposal`), which exports it under
//! `proposal.export_dir` and has the servers load it (`proposal.reload`).
//! The draw's [`ServerReport`] ([`ServerSampler::last_report`]) goes to the
//! step log (`server_logp_max_abs_diff`, `server_logp_mean_abs_diff`).

pub mod client;
pub mod config;
mod plugin;
pub mod protocol;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use align_core::logprob::{policy_logprobs, sampling_logprobs};
use align_core::sampling::Part;
use align_core::task::Prompt;
use align_core::{Policy, SampleBatch, SamplingConfig};
use anyhow::Context;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use client::{Client, PostError};
pub use config::{Api, LogprobsMode, OnDisagreement, ProposalConfig, Reload, ServerSamplerConfig};
use protocol::{Completion, RequestSpec};

/// One server's share of a draw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerStats {
    /// The endpoint the requests went to.
    pub url: String,
    /// HTTP attempts, failed ones included.
    pub requests: usize,
    /// Attempts that failed (dropped, timed out, 5xx …).
    pub failed: usize,
    /// Prompts whose samples this server gave.
    pub prompts: usize,
    /// Why the server was given up on during the draw, if it was.
    pub gave_up: Option<String>,
}

/// The servers' view of a draw, beside the trainer's recomputed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerReport {
    /// Per row: the servers' sequence log-density (sum of their token log-probs).
    pub server_logp: Vec<f64>,
    /// Per row: the trainer's value it was compared with (the proposal
    /// log-density for `processed` log-probs, the model's for `raw` ones
    /// and for greedy decoding).
    pub trainer_logp: Vec<f64>,
    /// Per row: the index in `urls` of the server that sampled it.
    pub served_by: Vec<usize>,
    /// Largest |server − trainer| over the rows.
    pub max_abs_diff: f64,
    /// Mean |server − trainer| over the rows.
    pub mean_abs_diff: f64,
    pub servers: Vec<ServerStats>,
}

/// A draw: the batch with the trainer's densities, and the servers' report.
#[derive(Debug)]
pub struct ServerSample {
    pub batch: SampleBatch,
    pub report: ServerReport,
}

/// Requests a sampler sends to an inference server's model.
pub struct ServerSampler {
    config: ServerSamplerConfig,
    client: Client,
    /// Per server: where completions go.
    endpoints: Vec<String>,
    /// The served name `sample` asks for (the prior until a refresh).
    current: Mutex<String>,
    /// Whether a refresh overwrote the weights served as `model` (SGLang).
    prior_replaced: AtomicBool,
    last_report: Mutex<Option<ServerReport>>,
    /// The directory of the refresh the servers loaded last (rank 0's):
    /// removed once they have loaded the next one.
    last_export: Mutex<Option<PathBuf>>,
}

/// A completion and the index of the server that gave it.
type Served = (Completion, usize);

/// One request's worth of work.
#[derive(Debug, Clone)]
struct Item {
    /// Indices into the call's prompts.
    prompts: Vec<usize>,
    /// Samples asked per prompt, numbered from `first_sample`.
    first_sample: usize,
    samples: usize,
    seed: u64,
    /// Answers that left some of these prompts out.
    short_answers: u32,
}

/// What the workers share.
struct Shared {
    queue: VecDeque<Item>,
    in_flight: usize,
    /// `(prompt, sample) → (completion, server)`.
    done: HashMap<(usize, usize), (Completion, usize)>,
    stats: Vec<ServerStats>,
    fatal: Option<anyhow::Error>,
}

/// SplitMix64 of `seed` and `salt`: independent request seeds.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The task's view of one call, for checking what the servers return.
struct Call<'a> {
    prompts: &'a [Prompt],
    /// Where `prompts` start in the whole call (a data-parallel rank's
    /// block; 0 in one process): the requests' seeds depend on it.
    first: usize,
    n: usize,
    max_new_tokens: i64,
    eos: Option<i64>,
    vocab: i64,
    sampling: &'a SamplingConfig,
    model: &'a str,
}

impl<'a> Call<'a> {
    /// A call, its settings checked.
    #[allow(clippy::too_many_arguments)]
    fn new(
        prompts: &'a [Prompt],
        first: usize,
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        policy: &dyn Policy,
        sampling: &'a SamplingConfig,
        model: &'a str,
    ) -> anyhow::Result<Call<'a>> {
        if let Err((key, message)) = sampling.validate() {
            anyhow::bail!("sampling `{key}`: {message}");
        }
        anyhow::ensure!(n >= 1, "n = {n}: ask for at least one sample per prompt");
        anyhow::ensure!(
            max_new_tokens >= 0,
            "max_new_tokens = {max_new_tokens}: must be ≥ 0"
        );
        if let Some(p) = prompts.iter().position(|p| p.ids.is_empty()) {
            anyhow::bail!(
                "prompt {} has no tokens: inference servers need at least one (a BOS token)",
                first + p
            );
        }
        Ok(Call {
            prompts,
            first,
            n: n as usize,
            max_new_tokens,
            eos,
            vocab: policy.vocab_size(),
            sampling,
            model,
        })
    }
}

/// Prompt `p` of `call`, named by its place in the whole call.
fn describe_prompt(call: &Call, p: usize) -> String {
    let ids = &call.prompts[p].ids;
    let p = call.first + p;
    let shown: Vec<String> = ids.iter().take(8).map(i64::to_string).collect();
    let more = if ids.len() > 8 { ", …" } else { "" };
    format!("prompt {p} (ids [{}{more}])", shown.join(", "))
}

impl ServerSampler {
    /// Checks `config` and sets up the clients (nothing is sent yet).
    pub fn new(config: ServerSamplerConfig) -> anyhow::Result<ServerSampler> {
        config.validate("")?;
        let api_key = match &config.api_key_env {
            Some(env) => Some(std::env::var(env).ok().filter(|k| !k.is_empty()).with_context(|| {
                format!("`api_key_env`: the environment variable `{env}` is not set; export it, or leave `api_key_env` out for servers without a key")
            })?),
            None => None,
        };
        let client = Client::new(
            Duration::from_secs_f64(config.timeout_s),
            config.retries,
            Duration::from_secs_f64(config.backoff_s),
            api_key,
        );
        let path = match config.api {
            Api::Openai => "/v1/completions",
            Api::LlamaCpp => "/completion",
        };
        let endpoints = config
            .urls
            .iter()
            .map(|u| format!("{}{path}", config::root(u)))
            .collect();
        Ok(ServerSampler {
            current: Mutex::new(config.model.clone()),
            prior_replaced: AtomicBool::new(false),
            last_export: Mutex::new(None),
            config,
            client,
            endpoints,
            last_report: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ServerSamplerConfig {
        &self.config
    }

    /// The endpoint of each server, in `urls` order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The served name [`ServerSampler::sample`] asks for: the latest
    /// refreshed proposal, or the prior before the first refresh.
    pub fn served_model(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The report of the latest [`ServerSampler::sample`] or
    /// [`ServerSampler::sample_prior`].
    pub fn last_report(&self) -> Option<ServerReport> {
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Draws `n` completions per prompt from the served proposal (the prior
    /// before the first refresh), `max_new_tokens` at most, each stopping at
    /// `eos`; `policy` (the trainer's copy of the served model) recomputes
    /// the log-densities. Deterministic given `seed` on deterministic servers.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        policy: &dyn Policy,
        prompts: &[Prompt],
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
    ) -> anyhow::Result<SampleBatch> {
        let whole = Part::whole(prompts.len());
        self.sample_part(
            policy,
            false,
            prompts,
            n,
            max_new_tokens,
            eos,
            config,
            seed,
            whole,
        )
    }

    /// [`ServerSampler::sample`] from the prior (`model`), whatever was refreshed.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_prior(
        &self,
        prior: &dyn Policy,
        prompts: &[Prompt],
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
    ) -> anyhow::Result<SampleBatch> {
        let whole = Part::whole(prompts.len());
        self.sample_part(
            prior,
            true,
            prompts,
            n,
            max_new_tokens,
            eos,
            config,
            seed,
            whole,
        )
    }

    /// [`ServerSampler::sample`] (or, `from_prior`, [`sample_prior`](Self::sample_prior))
    /// of `part` of a call: `prompts` are the call's prompts `part.first..`,
    /// one data-parallel rank's block. Each request's seed comes from where
    /// its prompts stand in the whole call, so the ranks' blocks ask for
    /// what one process's call asks for, prompt by prompt.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_part(
        &self,
        policy: &dyn Policy,
        from_prior: bool,
        prompts: &[Prompt],
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
        part: Part,
    ) -> anyhow::Result<SampleBatch> {
        let model = if from_prior {
            anyhow::ensure!(
                !self.prior_replaced.load(Ordering::Relaxed),
                "the servers no longer serve the prior `{}`: `sglang-update-weights` replaced its weights with the proposal's; \
                 sample the prior in process, or use `vllm-lora` (the prior stays served beside the adapters)",
                self.config.model
            );
            self.config.model.clone()
        } else {
            self.served_model()
        };
        let call = Call::new(
            prompts,
            part.first,
            n,
            max_new_tokens,
            eos,
            policy,
            config,
            &model,
        )?;
        self.keep(self.draw_call(policy, &call, seed)?)
    }

    fn keep(&self, s: ServerSample) -> anyhow::Result<SampleBatch> {
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.report);
        Ok(s.batch)
    }

    /// One whole call's draw from the served `model`, with its report.
    #[allow(clippy::too_many_arguments)]
    pub fn draw(
        &self,
        model: &str,
        policy: &dyn Policy,
        prompts: &[Prompt],
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
    ) -> anyhow::Result<ServerSample> {
        let call = Call::new(prompts, 0, n, max_new_tokens, eos, policy, config, model)?;
        self.draw_call(policy, &call, seed)
    }

    /// One draw of `call`, with its report; `policy` is the trainer's copy
    /// of the served model.
    fn draw_call(
        &self,
        policy: &dyn Policy,
        call: &Call,
        seed: u64,
    ) -> anyhow::Result<ServerSample> {
        let (prompts, n, max_new_tokens) = (call.prompts, call.n, call.max_new_tokens);
        let (completions, shared) = if max_new_tokens == 0 || prompts.is_empty() {
            let empty = Completion {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finish: "length".into(),
            };
            let rows = prompts.len() * n;
            (vec![(empty, 0); rows], self.stats_template())
        } else {
            self.collect(call, seed)?
        };
        self.assemble(policy, call, completions, shared)
    }

    fn stats_template(&self) -> Vec<ServerStats> {
        self.endpoints
            .iter()
            .map(|url| ServerStats {
                url: url.clone(),
                ..ServerStats::default()
            })
            .collect()
    }

    /// The call's requests, in a fixed order with fixed seeds. A request
    /// holds the prompts of one block of `prompts_per_request` of the whole
    /// call (a rank's block may cut one short at either end), and its seed
    /// is that block's; llama.cpp's, one per sample, are by the sample's
    /// place in the whole call. A server that samples each prompt of a
    /// request from its own generator seeded with the request's seed (vLLM
    /// and SGLang do) then answers a rank's prompts as it answers them in
    /// one process's call.
    fn items(&self, call: &Call, seed: u64) -> Vec<Item> {
        let p = call.prompts.len();
        match self.config.api {
            Api::Openai => {
                let k = self.config.prompts_per_request;
                let mut items: Vec<Item> = Vec::new();
                for local in 0..p {
                    let block = (call.first + local) / k;
                    match items.last_mut() {
                        Some(item) if (call.first + item.prompts[0]) / k == block => {
                            item.prompts.push(local)
                        }
                        _ => items.push(Item {
                            prompts: vec![local],
                            first_sample: 0,
                            samples: call.n,
                            seed: mix(seed, block as u64),
                            short_answers: 0,
                        }),
                    }
                }
                items
            }
            Api::LlamaCpp => (0..p)
                .flat_map(|prompt| {
                    let global = call.first + prompt;
                    (0..call.n).map(move |j| Item {
                        prompts: vec![prompt],
                        first_sample: j,
                        samples: 1,
                        seed: mix(seed, (global * call.n + j) as u64),
                        short_answers: 0,
                    })
                })
                .collect(),
        }
    }

    /// Every `(prompt, sample)`'s completion and its server, prompt-major.
    fn collect(&self, call: &Call, seed: u64) -> anyhow::Result<(Vec<Served>, Vec<ServerStats>)> {
        let shared = Mutex::new(Shared {
            queue: self.items(call, seed).into(),
            in_flight: 0,
            done: HashMap::new(),
            stats: self.stats_template(),
            fatal: None,
        });
        let wake = Condvar::new();
        std::thread::scope(|scope| {
            for server in 0..self.endpoints.len() {
                for _ in 0..self.config.concurrency {
                    let (shared, wake) = (&shared, &wake);
                    scope.spawn(move || self.worker(server, call, shared, wake));
                }
            }
        });
        let mut shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = shared.fatal.take() {
            return Err(e);
        }
        let rows = call.prompts.len() * call.n;
        if shared.done.len() < rows {
            let missing: Vec<usize> = (0..call.prompts.len())
                .filter(|&p| (0..call.n).any(|j| !shared.done.contains_key(&(p, j))))
                .collect();
            let why: Vec<String> = shared
                .stats
                .iter()
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.url,
                        s.gave_up.as_deref().unwrap_or("(no answer)")
                    )
                })
                .collect();
            anyhow::bail!(
                "no server could be reached: {} of {} prompts have no samples (first missing: prompt {}). {}",
                missing.len(),
                call.prompts.len(),
                missing[0],
                why.join("; ")
            );
        }
        for s in shared.stats.iter().filter(|s| s.gave_up.is_some()) {
            eprintln!(
                "server-sampler: gave up on {} during the draw ({}); the other servers took its prompts",
                s.url,
                s.gave_up.as_deref().unwrap_or_default()
            );
        }
        let mut completions = Vec::with_capacity(rows);
        for p in 0..call.prompts.len() {
            for j in 0..call.n {
                completions.push(shared.done.remove(&(p, j)).expect("counted above"));
            }
        }
        Ok((completions, shared.stats))
    }

    /// One request loop on `server`: takes work until there is none left,
    /// the server is given up on, or something is fatally wrong.
    fn worker(&self, server: usize, call: &Call, shared: &Mutex<Shared>, wake: &Condvar) {
        let url = &self.endpoints[server];
        loop {
            let item = {
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if s.fatal.is_some() || s.stats[server].gave_up.is_some() {
                        return;
                    }
                    if let Some(item) = s.queue.pop_front() {
                        s.in_flight += 1;
                        break item;
                    }
                    if s.in_flight == 0 {
                        return;
                    }
                    s = wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            };
            let spec = RequestSpec {
                model: call.model,
                prompts: item
                    .prompts
                    .iter()
                    .map(|&p| call.prompts[p].ids.as_slice())
                    .collect(),
                n: item.samples,
                max_new_tokens: call.max_new_tokens,
                eos: call.eos,
                sampling: call.sampling,
                seed: item.seed,
                mode: self.config.logprobs_mode,
            };
            let body = match self.config.api {
                Api::Openai => protocol::openai_body(&spec),
                Api::LlamaCpp => protocol::llama_cpp_body(&spec),
            }
            .to_string();
            let mut attempts = (0usize, 0usize);
            let answer = self.client.post(url, &body, true, |failed| {
                attempts.0 += 1;
                attempts.1 += failed as usize;
            });
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.in_flight -= 1;
            s.stats[server].requests += attempts.0;
            s.stats[server].failed += attempts.1;
            match answer {
                Ok(value) => {
                    if let Err(e) = self.accept(server, call, &item, &value, &mut s) {
                        s.fatal.get_or_insert(e);
                    }
                }
                Err(PostError::GaveUp { attempts, last }) => {
                    s.stats[server].gave_up = Some(format!(
                        "no answer after {attempts} attempts (`retries` = {}); last: {last}",
                        self.config.retries
                    ));
                    s.queue.push_front(item);
                }
                Err(PostError::Refused(why)) => {
                    let hint = if why.contains("HTTP 404") && why.contains("model") {
                        format!(" (is `{}` the name the server serves?)", call.model)
                    } else {
                        String::new()
                    };
                    s.fatal.get_or_insert(anyhow::anyhow!(
                        "{url} refused the request for {}{hint}: {why}",
                        describe_prompt(call, item.prompts[0])
                    ));
                }
            }
            drop(s);
            wake.notify_all();
        }
    }

    /// Files an answer's completions, checked against the task; queues the
    /// prompts it left out.
    fn accept(
        &self,
        server: usize,
        call: &Call,
        item: &Item,
        value: &serde_json::Value,
        s: &mut Shared,
    ) -> anyhow::Result<()> {
        let url = &self.endpoints[server];
        let read: protocol::Choices = match self.config.api {
            Api::Openai => protocol::read_openai(value, item.prompts.len(), item.samples),
            Api::LlamaCpp => protocol::read_llama_cpp(value, call.eos).map(|c| vec![((0, 0), c)]),
        }
        .map_err(|e| {
            anyhow::anyhow!(
                "{url}: unexpected answer for {}: {}",
                describe_prompt(call, item.prompts[0]),
                e.0
            )
        })?;
        let mut got: HashMap<(usize, usize), Completion> = HashMap::new();
        for ((k, j), c) in read {
            let (p, j) = (item.prompts[k], item.first_sample + j);
            self.check(url, call, p, j, &c)?;
            got.insert((p, j), c);
        }
        let mut missing = Vec::new();
        for &p in &item.prompts {
            let complete = (0..item.samples).all(|j| got.contains_key(&(p, item.first_sample + j)));
            if !complete {
                missing.push(p);
                continue;
            }
            for j in 0..item.samples {
                let key = (p, item.first_sample + j);
                let c = got.remove(&key).expect("checked complete");
                s.done.insert(key, (c, server));
            }
            s.stats[server].prompts += 1;
        }
        if !missing.is_empty() {
            anyhow::ensure!(
                item.short_answers < self.config.retries,
                "{url}: {} answers in a row left out samples of {} ({} of them)",
                item.short_answers + 1,
                describe_prompt(call, missing[0]),
                missing.len()
            );
            s.queue.push_back(Item {
                prompts: missing,
                short_answers: item.short_answers + 1,
                ..item.clone()
            });
        }
        Ok(())
    }

    /// A completion must be one the in-process sampler could have drawn:
    /// ids in the vocabulary, at most `max_new_tokens`, `eos` only last,
    /// and stopped early only at `eos`.
    fn check(
        &self,
        url: &str,
        call: &Call,
        p: usize,
        j: usize,
        c: &Completion,
    ) -> anyhow::Result<()> {
        let what = || format!("{url}: sample {j} of {}", describe_prompt(call, p));
        if let Some(&t) = c.tokens.iter().find(|&&t| t < 0 || t >= call.vocab) {
            anyhow::bail!(
                "{}: token {t} is outside the policy's vocabulary of {} (does the server serve the same model?)",
                what(),
                call.vocab
            );
        }
        let len = c.tokens.len() as i64;
        anyhow::ensure!(
            len <= call.max_new_tokens,
            "{}: {len} tokens, more than max_new_tokens = {}",
            what(),
            call.max_new_tokens
        );
        if let Some(eos) = call.eos {
            if let Some(at) = c.tokens.iter().position(|&t| t == eos) {
                anyhow::ensure!(
                    at + 1 == c.tokens.len(),
                    "{}: the end token {eos} at position {at} is not the last of {len} tokens",
                    what()
                );
            }
        }
        let ended = call.eos.is_some() && c.tokens.last() == call.eos.as_ref();
        anyhow::ensure!(
            ended || len == call.max_new_tokens,
            "{}: stopped after {len} of {} tokens without the end token {} (finish reason `{}`); \
             the server stops at something else too (vLLM: its generation config's stop tokens, \
             `--generation-config vllm`; llama.cpp: another end-of-generation token)",
            what(),
            call.max_new_tokens,
            call.eos.map_or("(none)".to_string(), |e| e.to_string()),
            c.finish
        );
        if let Some(t) = c.logprobs.iter().position(|v| !v.is_finite()) {
            anyhow::bail!("{}: token {t}'s log-prob is {}", what(), c.logprobs[t]);
        }
        Ok(())
    }

    /// The batch of `completions` (prompt-major), its densities recomputed by
    /// `policy`, and the comparison with the servers' values.
    fn assemble(
        &self,
        policy: &dyn Policy,
        call: &Call,
        completions: Vec<Served>,
        stats: Vec<ServerStats>,
    ) -> anyhow::Result<ServerSample> {
        let n = call.n;
        let device = policy.device();
        let repeated: Vec<Prompt> = call
            .prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), n))
            .collect();
        let tokens: Vec<Vec<i64>> = completions.iter().map(|(c, _)| c.tokens.clone()).collect();
        let mut batch = SampleBatch::from_pairs(&repeated, &tokens, device);
        batch.prompt_index = (0..call.prompts.len())
            .flat_map(|p| std::iter::repeat_n(p, n))
            .collect();
        let rows = batch.len() as i64;
        let (proposal, model) = if rows == 0 {
            let z = Tensor::zeros([0], (Kind::Float, device));
            (z.shallow_clone(), z)
        } else {
            let _guard = tch::no_grad_guard();
            let chunk = self.config.rescore_rows as i64;
            let mut proposal = Vec::new();
            let mut model = Vec::new();
            for start in (0..rows).step_by(chunk as usize) {
                let len = chunk.min(rows - start);
                let part = batch.select_rows(&Tensor::arange_start(
                    start,
                    start + len,
                    (Kind::Int64, device),
                ));
                if call.sampling.temperature == 0.0 {
                    proposal.push(Tensor::zeros([len], (Kind::Float, device)));
                    model.push(policy_logprobs(policy, &part));
                } else if call.sampling.is_plain() {
                    let q = sampling_logprobs(policy, &part, call.sampling);
                    model.push(q.shallow_clone());
                    proposal.push(q);
                } else {
                    proposal.push(sampling_logprobs(policy, &part, call.sampling));
                    model.push(policy_logprobs(policy, &part));
                }
            }
            // f32, as the in-process sampler records them (an f64 model's
            // `policy_logprobs` are f64).
            (
                Tensor::cat(&proposal, 0).to_kind(Kind::Float),
                Tensor::cat(&model, 0).to_kind(Kind::Float),
            )
        };
        batch.proposal_logp = proposal;
        batch.model_logp = model;

        // The servers' values beside the trainer's.
        let against =
            if self.config.logprobs_mode == LogprobsMode::Raw || call.sampling.temperature == 0.0 {
                &batch.model_logp
            } else {
                &batch.proposal_logp
            };
        let trainer: Vec<f64> =
            Vec::<f64>::try_from(against.to_device(Device::Cpu).to_kind(Kind::Double))?;
        let server: Vec<f64> = completions
            .iter()
            .map(|(c, _)| c.logprobs.iter().sum())
            .collect();
        let diffs: Vec<f64> = server
            .iter()
            .zip(&trainer)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max_abs_diff = diffs.iter().copied().fold(0.0, f64::max);
        let mean_abs_diff = if diffs.is_empty() {
            0.0
        } else {
            diffs.iter().sum::<f64>() / diffs.len() as f64
        };
        let served_by: Vec<usize> = completions.iter().map(|(_, s)| *s).collect();
        let worst = diffs.iter().enumerate().find(|&(row, &d)| {
            d > self.config.tolerance
                + self.config.tolerance_per_token * completions[row].0.tokens.len() as f64
        });
        if let Some((row, &d)) = worst {
            let (p, j) = (row / n, row % n);
            let which = match (self.config.logprobs_mode, call.sampling.temperature == 0.0) {
                (LogprobsMode::Processed, false) => "proposal (after temperature, top-k, top-p)",
                _ => "model (temperature 1)",
            };
            let message = format!(
                "{}: the server's log-density of sample {j} of {} is {:.6}, the trainer's {which} log-density is {:.6} \
                 (|difference| {d:.6} over {} tokens, beyond tolerance = {} + tolerance_per_token = {} per token; \
                 largest {max_abs_diff:.6}, mean {mean_abs_diff:.6} over {} rows). The server does not sample from the trainer's \
                 model `{}`: check that it loaded the same weights (after a refresh: `proposal.reload`), and that \
                 `logprobs_mode` (`{}`) is what the server reports (vLLM: `--logprobs-mode processed_logprobs` or `raw_logprobs`)",
                self.endpoints[served_by[row]],
                describe_prompt(call, p),
                server[row],
                trainer[row],
                completions[row].0.tokens.len(),
                self.config.tolerance,
                self.config.tolerance_per_token,
                diffs.len(),
                call.model,
                match self.config.logprobs_mode {
                    LogprobsMode::Processed => "processed",
                    LogprobsMode::Raw => "raw",
                },
            );
            match self.config.on_disagreement {
                OnDisagreement::Error => anyhow::bail!(message),
                OnDisagreement::Warn => eprintln!("server-sampler: warning: {message}"),
            }
        }
        Ok(ServerSample {
            batch,
            report: ServerReport {
                server_logp: server,
                trainer_logp: trainer,
                served_by,
                max_abs_diff,
                mean_abs_diff,
                servers: stats,
            },
        })
    }

    /// Exports `policy` as refresh `version` under `proposal.export_dir` and
    /// has every server load it (`proposal.reload`); later
    /// [`ServerSampler::sample`] calls ask for it. Returns the export directory.
    ///
    /// Data parallel (`comm` of several ranks): rank 0 alone exports and has
    /// the servers load it (every rank holds the same proposal); the others
    /// wait for its outcome, then ask for what it loaded (or stop with it).
    pub fn refresh(
        &self,
        policy: &dyn Policy,
        version: u64,
        comm: &dyn align_distributed::Comm,
    ) -> anyhow::Result<PathBuf> {
        let p = self.config.proposal.as_ref().context(
            "proposal refreshes need a `proposal` table (proposal_model, export_dir, reload) in the server settings",
        )?;
        let name = format!("{}-{version}", p.proposal_model);
        let dir = p.export_dir.join(&name);
        let done = match comm.is_root() {
            true => self.export_and_load(policy, p, &name, &dir),
            false => Ok(()),
        };
        let mut ok = [u8::from(done.is_ok())];
        comm.broadcast(&mut ok);
        done?;
        anyhow::ensure!(
            ok[0] == 1,
            "rank 0 could not export refresh {version} of the proposal or have the servers load it \
             (its error says why)"
        );
        let served = match p.reload {
            Reload::VllmLora => name,
            Reload::SglangUpdateWeights => {
                self.prior_replaced.store(true, Ordering::Relaxed);
                self.config.model.clone()
            }
            Reload::External => p.proposal_model.clone(),
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = served;
        Ok(dir)
    }

    /// Writes refresh `name` of `policy` to `dir` and has every server load it.
    fn export_and_load(
        &self,
        policy: &dyn Policy,
        p: &ProposalConfig,
        name: &str,
        dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&p.export_dir).with_context(|| {
            format!("`proposal.export_dir`: creating {}", p.export_dir.display())
        })?;
        let seen_at = match &p.server_export_dir {
            Some(d) => format!("{}/{name}", d.trim_end_matches('/')),
            None => dir.display().to_string(),
        };
        // The servers read the directory whole or not at all: it appears
        // only once written (a refresh redone on resume replaces it).
        let path = match p.reload {
            Reload::VllmLora => {
                align_core::io::write_dir_atomic(dir, |tmp| {
                    let wrote = policy.export(tmp)?;
                    anyhow::ensure!(
                        wrote.iter().any(|w| w == "adapter"),
                        "`proposal.reload = \"vllm-lora\"` loads a LoRA adapter, and this \
                         policy has none (it exports {wrote:?}): train with `[model.hf] lora = \
                         {{ … }}`, or use `sglang-update-weights` or `external`, which load the \
                         whole model"
                    );
                    Ok(())
                })
                .context("exporting the proposal")?;
                format!("{seen_at}/adapter")
            }
            Reload::SglangUpdateWeights | Reload::External => {
                align_core::io::write_dir_atomic(dir, |tmp| {
                    anyhow::ensure!(
                        policy.save_hf(tmp)?,
                        "this policy has no HF form for the servers to load (its model writes \
                         no `config.json`); an HF model (`[model.hf]`) does"
                    );
                    Ok(())
                })
                .context("exporting the proposal")?;
                seen_at
            }
        };
        let roots: Vec<&str> = self.config.urls.iter().map(|u| config::root(u)).collect();
        let post = |url: String, body: serde_json::Value| -> anyhow::Result<()> {
            self.client
                .post(&url, &body.to_string(), false, |_| {})
                .map(|_| ())
                .map_err(|e| match e {
                    PostError::GaveUp { attempts, last } => anyhow::anyhow!(
                        "{url}: no answer after {attempts} attempts while loading the proposal; last: {last}"
                    ),
                    PostError::Refused(why) => {
                        anyhow::anyhow!("{url} refused to load the proposal: {why}")
                    }
                })
        };
        let previous = self.served_model();
        match p.reload {
            Reload::VllmLora => {
                for r in &roots {
                    post(
                        format!("{r}/v1/load_lora_adapter"),
                        json!({"lora_name": name, "lora_path": path}),
                    )?;
                }
                if previous != self.config.model {
                    for r in &roots {
                        // The old adapter only takes memory; failing to drop it is not fatal.
                        if let Err(e) = post(
                            format!("{r}/v1/unload_lora_adapter"),
                            json!({"lora_name": previous}),
                        ) {
                            eprintln!("server-sampler: {e}");
                        }
                    }
                }
            }
            Reload::SglangUpdateWeights => {
                for r in &roots {
                    post(
                        format!("{r}/update_weights_from_disk"),
                        json!({"model_path": path}),
                    )?;
                }
            }
            // The tooling outside may still read the older ones: all kept.
            Reload::External => return Ok(()),
        }
        // The servers hold the new proposal and no longer read the previous
        // one (a full model per refresh would otherwise pile up).
        let previous = self
            .last_export
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(dir.to_path_buf());
        if let Some(old) = previous.filter(|old| old != dir) {
            if let Err(e) = std::fs::remove_dir_all(&old) {
                eprintln!(
                    "server-sampler: could not remove the previous export {}: {e}",
                    old.display()
                );
            }
        }
        Ok(())
    }
}
