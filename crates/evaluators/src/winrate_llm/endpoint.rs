//! The endpoint judge: an OpenAI-compatible `/chat/completions` server
//! (OpenAI, vLLM, llama.cpp) asked for one token at temperature 0 with its
//! top log-probs. Requests are rate-limited, retried with exponential backoff
//! on connection errors, 429 and 5xx, and cached on disk.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use align_core::{EvalContext, PluginError};
use serde_json::{json, Value};

use super::cache::Cache;
use super::{Judge, OpenAiConfig};

pub struct EndpointJudge {
    url: String,
    base_url: String,
    model: String,
    api_key: Option<String>,
    key_env: String,
    choices: [String; 2],
    interval: Duration,
    retries: u32,
    backoff: Duration,
    agent: ureq::Agent,
    cache: Cache,
    last_request: Mutex<Option<Instant>>,
    warned_no_logprobs: AtomicBool,
    warned_unparsed: AtomicBool,
}

/// Whether `base_url` names this machine (a local server needs no key).
fn is_loopback(base_url: &str) -> bool {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn seconds(key: &str, value: f64) -> Result<Duration, PluginError> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PluginError::invalid(
            &format!("backend.openai.{key}"),
            "must be a finite number of seconds ≥ 0",
        )
    })
}

/// Errors a retry may cure: the connection, not the request.
fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

/// A response body for an error message: the start of it, on one line.
fn excerpt(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

impl EndpointJudge {
    pub fn new(c: &OpenAiConfig, choices: &[String; 2]) -> Result<EndpointJudge, PluginError> {
        let base_url = c.base_url.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(PluginError::invalid(
                "backend.openai.base_url",
                format!(
                    "`{}`: give an http:// or https:// URL, e.g. \"https://api.openai.com/v1\"",
                    c.base_url
                ),
            ));
        }
        let api_key = std::env::var(&c.api_key_env).ok().filter(|k| !k.is_empty());
        if api_key.is_none() && !is_loopback(&base_url) {
            return Err(PluginError::invalid(
                "backend.openai.api_key_env",
                format!(
                    "the environment variable `{}` holding the API key for {base_url} is not set; \
                     export it, or name another variable with `api_key_env`",
                    c.api_key_env
                ),
            ));
        }
        if !(c.requests_per_minute.is_finite() && c.requests_per_minute > 0.0) {
            return Err(PluginError::invalid(
                "backend.openai.requests_per_minute",
                "must be > 0",
            ));
        }
        let timeout = seconds("timeout_s", c.timeout_s)?;
        if timeout.is_zero() {
            return Err(PluginError::invalid(
                "backend.openai.timeout_s",
                "must be > 0",
            ));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Statuses are read, not raised, so 429 and 5xx can be retried.
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(EndpointJudge {
            url: format!("{base_url}/chat/completions"),
            base_url,
            model: c.model.clone(),
            api_key,
            key_env: c.api_key_env.clone(),
            choices: choices.clone(),
            interval: Duration::from_secs_f64(60.0 / c.requests_per_minute),
            retries: c.retries,
            backoff: seconds("backoff_s", c.backoff_s)?,
            agent,
            cache: Cache::new(c.cache.path()),
            last_request: Mutex::new(None),
            warned_no_logprobs: AtomicBool::new(false),
            warned_unparsed: AtomicBool::new(false),
        })
    }

    fn request_body(&self, prompt: &str) -> String {
        // serde_json's maps are sorted, so the body (and its cache key) is
        // the same for the same prompt.
        json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": 20,
        })
        .to_string()
    }

    /// Waits until `interval` has passed since the previous request.
    fn pace(&self) {
        let mut last = self.last_request.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = *last {
            let next = t + self.interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
        *last = Some(Instant::now());
    }

    /// The response to `body`, from the cache or the server.
    fn complete(&self, body: &str) -> anyhow::Result<Value> {
        let key = Cache::key(&self.base_url, &self.model, body);
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        let v = self.send(body)?;
        self.cache.put(&key, &v)?;
        Ok(v)
    }

    fn send(&self, body: &str) -> anyhow::Result<Value> {
        let mut last_failure = String::new();
        for attempt in 0..=self.retries {
            self.pace();
            let mut request = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                request = request.header("Authorization", format!("Bearer {key}"));
            }
            let mut wait = None;
            match request.send(body) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    wait = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .and_then(|s| Duration::try_from_secs_f64(s.min(600.0)).ok());
                    match response.body_mut().read_to_string() {
                        Ok(text) if (200..300).contains(&status) => {
                            return serde_json::from_str(&text).map_err(|e| {
                                anyhow::anyhow!(
                                    "{}: the answer is not JSON ({e}): {}",
                                    self.url,
                                    excerpt(&text)
                                )
                            });
                        }
                        Ok(text) if status == 429 || status >= 500 => {
                            last_failure = format!("HTTP {status}: {}", excerpt(&text));
                        }
                        Ok(text) => {
                            let hint = if status == 401 || status == 403 {
                                format!(" (check the API key in `{}`)", self.key_env)
                            } else {
                                String::new()
                            };
                            anyhow::bail!("{}: HTTP {status}{hint}: {}", self.url, excerpt(&text));
                        }
                        Err(e) if transient(&e) => {
                            last_failure = format!("HTTP {status}, then reading the body: {e}");
                        }
                        Err(e) => anyhow::bail!("{}: reading the answer: {e}", self.url),
                    }
                }
                Err(e) if transient(&e) => last_failure = e.to_string(),
                Err(e) => anyhow::bail!("{}: {e}", self.url),
            }
            if attempt < self.retries {
                let backoff = self.backoff.saturating_mul(1 << attempt.min(16));
                std::thread::sleep(wait.unwrap_or(backoff).min(Duration::from_secs(600)));
            }
        }
        anyhow::bail!(
            "{}: no answer after {} attempts (`backend.openai.retries` = {}); last: {last_failure}",
            self.url,
            self.retries + 1,
            self.retries
        )
    }

    /// P(first choice) from one response: the first token's top log-probs
    /// renormalised over the two choices, else the answer text.
    fn read(&self, response: &Value) -> anyhow::Result<f64> {
        let choice = &response["choices"][0];
        anyhow::ensure!(
            choice.is_object(),
            "{}: the answer has no `choices[0]`: {}",
            self.url,
            excerpt(&response.to_string())
        );
        let top = choice["logprobs"]["content"][0]["top_logprobs"].as_array();
        if let Some(top) = top {
            let mass = |label: &str| {
                let lps: Vec<f64> = top
                    .iter()
                    .filter(|t| t["token"].as_str().is_some_and(|s| s.trim() == label))
                    .filter_map(|t| t["logprob"].as_f64())
                    .collect();
                let max = lps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    return f64::NEG_INFINITY;
                }
                max + lps.iter().map(|l| (l - max).exp()).sum::<f64>().ln()
            };
            let (a, b) = (mass(&self.choices[0]), mass(&self.choices[1]));
            if a > f64::NEG_INFINITY || b > f64::NEG_INFINITY {
                // An answer absent from the top list gets no mass.
                return Ok(1.0 / (1.0 + (b - a).exp()));
            }
        } else if !self.warned_no_logprobs.swap(true, Ordering::Relaxed) {
            eprintln!(
                "winrate-llm: {} returned no log-probs; judging by the answer text (probabilities 0 or 1)",
                self.url
            );
        }
        let content = choice["message"]["content"].as_str().unwrap_or("").trim();
        let starts = |label: &str| {
            content
                .strip_prefix(label)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric()))
        };
        match (starts(&self.choices[0]), starts(&self.choices[1])) {
            (true, false) => Ok(1.0),
            (false, true) => Ok(0.0),
            _ => {
                if !self.warned_unparsed.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "winrate-llm: {} answered {content:?}, neither {:?} nor {:?}; counted as undecided (such answers count ½)",
                        self.url, self.choices[0], self.choices[1]
                    );
                }
                Ok(0.5)
            }
        }
    }
}

impl Judge for EndpointJudge {
    fn prob_first(&self, _ctx: &EvalContext, prompts: &[String]) -> anyhow::Result<Vec<f64>> {
        prompts
            .iter()
            .map(|p| self.read(&self.complete(&self.request_body(p))?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_need_no_key() {
        for url in [
            "http://127.0.0.1:8000/v1",
            "http://localhost/v1",
            "http://[::1]:8080/v1",
            "http://user@127.0.0.2:1/",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://api.openai.com/v1",
            "http://10.0.0.1:8000",
            "http://localhost.example.com",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
