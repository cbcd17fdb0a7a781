//! One server's HTTP: JSON posts retried with exponential backoff on what a
//! retry may cure (the connection, timeouts, HTTP 408 / 429 / 5xx, a body
//! cut short), failing at once on what it cannot (other 4xx).

use std::time::Duration;

use serde_json::Value;

/// Why a post produced no answer.
#[derive(Debug)]
pub enum PostError {
    /// Every attempt failed in a way a retry may cure: the server is down.
    GaveUp { attempts: u32, last: String },
    /// The server refused the request (4xx): retrying will not help.
    Refused(String),
}

/// How one attempt went.
enum Attempt {
    Answer(Value),
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
    Refused(String),
}

pub struct Client {
    agent: ureq::Agent,
    api_key: Option<String>,
    retries: u32,
    backoff: Duration,
}

/// A response body for an error message: the start of it, on one line.
pub fn excerpt(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// Largest answer read (a batch of prompts × n × tokens with log-probs).
const BODY_LIMIT: u64 = 1 << 30;

impl Client {
    pub fn new(
        timeout: Duration,
        retries: u32,
        backoff: Duration,
        api_key: Option<String>,
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Statuses are read, not raised, so 429 and 5xx can be retried.
            .http_status_as_error(false)
            .build()
            .new_agent();
        Client {
            agent,
            api_key,
            retries,
            backoff,
        }
    }

    fn attempt(&self, url: &str, body: &str, json: bool) -> Attempt {
        let mut request = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send(body) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Transient {
                    why: e.to_string(),
                    retry_after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s.min(600.0)).ok());
        let text = match response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Transient {
                    why: format!("HTTP {status}, then reading the body: {e}"),
                    retry_after,
                }
            }
        };
        match status {
            200..=299 if !json => Attempt::Answer(Value::String(text)),
            200..=299 => match serde_json::from_str(&text) {
                Ok(v) => Attempt::Answer(v),
                // A body cut short by a proxy or a dying server.
                Err(e) => Attempt::Transient {
                    why: format!(
                        "HTTP {status} but the body is not JSON ({e}): {}",
                        excerpt(&text)
                    ),
                    retry_after,
                },
            },
            408 | 429 | 500..=599 => Attempt::Transient {
                why: format!("HTTP {status}: {}", excerpt(&text)),
                retry_after,
            },
            _ => Attempt::Refused(format!("HTTP {status}: {}", excerpt(&text))),
        }
    }

    /// Posts `body` to `url`, retrying, for a JSON answer (`json`; else the
    /// answer's text as a JSON string); `on_attempt` is told of every attempt
    /// (`true`: it failed and will be retried or given up on).
    pub fn post(
        &self,
        url: &str,
        body: &str,
        json: bool,
        mut on_attempt: impl FnMut(bool),
    ) -> Result<Value, PostError> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            match self.attempt(url, body, json) {
                Attempt::Answer(v) => {
                    on_attempt(false);
                    return Ok(v);
                }
                Attempt::Refused(why) => {
                    on_attempt(true);
                    return Err(PostError::Refused(why));
                }
                Attempt::Transient { why, retry_after } => {
                    on_attempt(true);
                    last = why;
                    if attempt < self.retries {
                        let backoff = self.backoff.saturating_mul(1 << attempt.min(16));
                        let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(600));
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        Err(PostError::GaveUp {
            attempts: self.retries + 1,
            last,
        })
    }
}
