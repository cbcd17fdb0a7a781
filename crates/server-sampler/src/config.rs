//! The manifest-facing settings of the server sampler, and their checks.

use std::path::PathBuf;
use std::time::Duration;

use align_core::PluginError;
use serde::{Deserialize, Serialize};

/// Which HTTP API the servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// vLLM or SGLang: `POST /v1/completions` with `prompt` as a list of
    /// token-id lists and `n` samples per prompt.
    #[default]
    Openai,
    /// llama.cpp's `llama-server`: `POST /completion`, one prompt and one
    /// sample per request (it has no `n`).
    LlamaCpp,
}

/// What the servers' reported log-probs are the log-probs of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogprobsMode {
    /// The distribution sampled from, after temperature, top-k and top-p:
    /// vLLM started with `--logprobs-mode processed_logprobs`, llama.cpp
    /// with `post_sampling_probs` (sent by this sampler). Compared with the
    /// recomputed proposal log-density.
    #[default]
    Processed,
    /// The unmodified model (temperature 1): vLLM's default
    /// `raw_logprobs`, SGLang. Compared with the recomputed model log-density.
    Raw,
}

/// What a disagreement beyond the tolerance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnDisagreement {
    /// Stop with an error naming the server, the prompt and both values.
    #[default]
    Error,
    /// Print a warning and go on (the trainer's values are used either way).
    Warn,
}

/// How a server picks up a refreshed proposal that the trainer exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reload {
    /// vLLM with runtime LoRA updates (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`,
    /// `--enable-lora`): `POST /v1/load_lora_adapter` with the exported PEFT
    /// adapter, served under a new name per refresh.
    VllmLora,
    /// SGLang: `POST /update_weights_from_disk` with the exported HF
    /// directory of the whole model (LoRA adapters merged into it).
    SglangUpdateWeights,
    /// Something outside the trainer (a script, an operator) restarts or
    /// reloads the servers on the exported HF directory of the whole model
    /// and serves it as `proposal_model`; the sampler only exports and then
    /// asks for that name.
    External,
}

/// Proposal refreshes: where the policy is exported and how the servers load it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalConfig {
    /// The name the refreshed proposal is served under (the request's
    /// `model`); with `vllm-lora` each refresh is `<proposal_model>-<version>`.
    pub proposal_model: String,
    /// Where the trainer writes each refresh, `<export_dir>/<proposal_model>-<version>/`:
    /// the PEFT adapter in `adapter/` there for `vllm-lora`, else the whole
    /// model as an HF directory (`config.json`, `model.safetensors`,
    /// tokenizer files). Each appears only once complete, and with
    /// `vllm-lora` and `sglang-update-weights` the previous one is removed
    /// once the servers have loaded the new one (`external` keeps them all).
    pub export_dir: PathBuf,
    /// The same directory as the servers see it (a shared file system mounted
    /// elsewhere); default: `export_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_export_dir: Option<String>,
    pub reload: Reload,
}

/// `[… .server]`: the servers to sample from and how to talk to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSamplerConfig {
    /// Server roots, e.g. `"http://10.0.0.5:8000"` (a trailing `/v1` is
    /// accepted); the prompts are spread across them.
    pub urls: Vec<String>,
    #[serde(default)]
    pub api: Api,
    /// The served name of the prior (the request's `model` until the first refresh).
    pub model: String,
    /// Seconds one request may take, connection to last byte.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Retries of a request after a dropped connection, a timeout, HTTP 429 or
    /// 5xx, before its server is given up on (its work goes to the others).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First wait between retries, doubled each time (a `Retry-After` wins).
    #[serde(default = "default_backoff_s")]
    pub backoff_s: f64,
    /// Prompts per `/v1/completions` request (each with `n` samples).
    #[serde(default = "default_prompts_per_request")]
    pub prompts_per_request: usize,
    /// Requests in flight per server.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub logprobs_mode: LogprobsMode,
    /// Largest |server − trainer| sequence log-density allowed, in nats …
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// … plus this much per completion token.
    #[serde(default = "default_tolerance_per_token")]
    pub tolerance_per_token: f64,
    #[serde(default)]
    pub on_disagreement: OnDisagreement,
    /// Environment variable holding a bearer token (unset: no `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Rows per forward pass when the trainer recomputes the log-densities.
    #[serde(default = "default_rescore_rows")]
    pub rescore_rows: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<ProposalConfig>,
}

fn default_timeout_s() -> f64 {
    600.0
}
fn default_retries() -> u32 {
    4
}
fn default_backoff_s() -> f64 {
    1.0
}
fn default_prompts_per_request() -> usize {
    16
}
fn default_concurrency() -> usize {
    4
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_tolerance_per_token() -> f64 {
    0.01
}
fn default_rescore_rows() -> usize {
    32
}

impl ServerSamplerConfig {
    /// A config with every default, for `urls` serving `model`.
    pub fn new(urls: Vec<String>, model: &str) -> ServerSamplerConfig {
        ServerSamplerConfig {
            urls,
            api: Api::default(),
            model: model.to_string(),
            timeout_s: default_timeout_s(),
            retries: default_retries(),
            backoff_s: default_backoff_s(),
            prompts_per_request: default_prompts_per_request(),
            concurrency: default_concurrency(),
            logprobs_mode: LogprobsMode::default(),
            tolerance: default_tolerance(),
            tolerance_per_token: default_tolerance_per_token(),
            on_disagreement: OnDisagreement::default(),
            api_key_env: None,
            rescore_rows: default_rescore_rows(),
            proposal: None,
        }
    }

    /// Checks every value; the error names the key under `at` (the table's
    /// path in the manifest, e.g. `"sampler.server"`) and says how to fix it.
    pub fn validate(&self, at: &str) -> Result<(), PluginError> {
        let key = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        if self.urls.is_empty() {
            return Err(PluginError::invalid(
                &key("urls"),
                "no server: give at least one, e.g. urls = [\"http://127.0.0.1:8000\"]",
            ));
        }
        for (i, url) in self.urls.iter().enumerate() {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') => {}
                _ => {
                    return Err(PluginError::invalid(
                        &key(&format!("urls[{i}]")),
                        format!(
                            "`{url}`: give the server's http:// or https:// root, e.g. \"http://127.0.0.1:8000\""
                        ),
                    ))
                }
            }
            if let Some(j) = self.urls[..i].iter().position(|u| root(u) == root(url)) {
                return Err(PluginError::invalid(
                    &key(&format!("urls[{i}]")),
                    format!("`{url}` is urls[{j}] again: list each server once (raise `concurrency` for more requests in flight)"),
                ));
            }
        }
        if self.model.trim().is_empty() {
            return Err(PluginError::invalid(
                &key("model"),
                "empty: give the name the servers serve the prior under (vLLM: `--served-model-name`, or the model path)",
            ));
        }
        let seconds = |k: &str, v: f64, zero_ok: bool| -> Result<(), PluginError> {
            if !(v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)))
                || Duration::try_from_secs_f64(v).is_err()
            {
                let bound = if zero_ok { "≥ 0" } else { "> 0" };
                return Err(PluginError::invalid(
                    &key(k),
                    format!("{v}: must be a finite number of seconds {bound}"),
                ));
            }
            Ok(())
        };
        seconds("timeout_s", self.timeout_s, false)?;
        seconds("backoff_s", self.backoff_s, true)?;
        if self.prompts_per_request == 0 {
            return Err(PluginError::invalid(
                &key("prompts_per_request"),
                "must be ≥ 1 (prompts sent in one request)",
            ));
        }
        if self.concurrency == 0 {
            return Err(PluginError::invalid(
                &key("concurrency"),
                "must be ≥ 1 (requests in flight per server)",
            ));
        }
        for (k, v) in [
            ("tolerance", self.tolerance),
            ("tolerance_per_token", self.tolerance_per_token),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(PluginError::invalid(
                    &key(k),
                    format!("{v}: must be a finite number of nats ≥ 0"),
                ));
            }
        }
        if self.rescore_rows == 0 {
            return Err(PluginError::invalid(
                &key("rescore_rows"),
                "must be ≥ 1 (rows per forward pass of the recomputation)",
            ));
        }
        if let Some(env) = &self.api_key_env {
            if env.is_empty() {
                return Err(PluginError::invalid(
                    &key("api_key_env"),
                    "empty: name the environment variable that holds the key, or leave the key out",
                ));
            }
        }
        if let Some(p) = &self.proposal {
            if p.proposal_model.trim().is_empty() {
                return Err(PluginError::invalid(
                    &key("proposal.proposal_model"),
                    "empty: give the name refreshed proposals are served under, e.g. \"proposal\"",
                ));
            }
            if p.proposal_model.contains(['/', '\\']) || p.proposal_model.starts_with('.') {
                return Err(PluginError::invalid(
                    &key("proposal.proposal_model"),
                    format!(
                        "`{}`: it names the export directories, so use a plain name without `/` or a leading `.`",
                        p.proposal_model
                    ),
                ));
            }
            if p.export_dir.as_os_str().is_empty() {
                return Err(PluginError::invalid(
                    &key("proposal.export_dir"),
                    "empty: give a directory the servers can read (a shared file system)",
                ));
            }
            if p.reload == Reload::VllmLora && self.api != Api::Openai {
                return Err(PluginError::invalid(
                    &key("proposal.reload"),
                    "`vllm-lora` loads adapters through vLLM's API: use it with api = \"openai\", or reload = \"external\"",
                ));
            }
            if p.reload == Reload::SglangUpdateWeights && self.api != Api::Openai {
                return Err(PluginError::invalid(
                    &key("proposal.reload"),
                    "`sglang-update-weights` is SGLang's API: use it with api = \"openai\", or reload = \"external\"",
                ));
            }
        }
        Ok(())
    }
}

/// A server's root without a trailing `/` or `/v1`.
pub(crate) fn root(url: &str) -> &str {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/v1").unwrap_or(url)
}
