//! The servers' JSON: request bodies, and the sampled tokens with their
//! log-probs read back from the answers.
//!
//! vLLM / SGLang `POST /v1/completions` (OpenAI's legacy completions API):
//! `prompt` is a list of token-id lists, `n` samples each; the answer's
//! `choices[i]` is sample `i % n` of prompt `i / n` (vLLM numbers them prompt
//! by prompt). Token ids come from `choices[i].token_ids` (vLLM ≥ 0.10.2 with
//! `return_token_ids`) or from `logprobs.tokens` written as `"token_id:<id>"`
//! (`return_tokens_as_token_ids`); the log-probs from `logprobs.token_logprobs`
//! (vLLM clamps −∞ to −9999).
//!
//! llama.cpp `POST /completion`: one prompt of token ids, one sample; the
//! answer's `tokens` (with `return_tokens`) and `completion_probabilities[t]`
//! with `logprob` (raw) or, with `post_sampling_probs`, `prob` (after the
//! sampler chain, which this sampler sets to top-k → temperature → top-p, the
//! trainer's order).

use align_core::SamplingConfig;
use serde_json::{json, Value};

use crate::config::LogprobsMode;

/// One sampled completion as a server reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub tokens: Vec<i64>,
    /// The server's log-prob of each token (same length as `tokens`).
    pub logprobs: Vec<f64>,
    /// `finish_reason` / `stop_type`, for error messages.
    pub finish: String,
}

/// What one request asks for.
pub struct RequestSpec<'a> {
    pub model: &'a str,
    pub prompts: Vec<&'a [i64]>,
    pub n: usize,
    pub max_new_tokens: i64,
    pub eos: Option<i64>,
    pub sampling: &'a SamplingConfig,
    pub seed: u64,
    pub mode: LogprobsMode,
}

/// The `/v1/completions` body. Every sampling setting is sent, neutral ones
/// included, so a server's defaults (vLLM reads the model's
/// `generation_config.json`) cannot change the distribution; stopping is the
/// task's `eos` alone (`ignore_eos` + `stop_token_ids`).
pub fn openai_body(r: &RequestSpec) -> Value {
    json!({
        "model": r.model,
        "prompt": r.prompts,
        "n": r.n,
        "max_tokens": r.max_new_tokens,
        "temperature": r.sampling.temperature,
        "top_p": r.sampling.top_p.unwrap_or(1.0),
        "top_k": r.sampling.top_k.unwrap_or(-1),
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "min_tokens": 0,
        // vLLM's seed is an int64 ≥ 0 here.
        "seed": r.seed >> 1,
        "logprobs": 1,
        "ignore_eos": true,
        "stop_token_ids": r.eos.map(|e| vec![e]).unwrap_or_default(),
        "skip_special_tokens": false,
        "return_token_ids": true,
        "return_tokens_as_token_ids": true,
        "stream": false,
    })
}

/// The llama.cpp `/completion` body (one prompt, one sample).
pub fn llama_cpp_body(r: &RequestSpec) -> Value {
    json!({
        "prompt": r.prompts[0],
        "n_predict": r.max_new_tokens,
        "temperature": r.sampling.temperature,
        "top_k": r.sampling.top_k.unwrap_or(0),
        "top_p": r.sampling.top_p.unwrap_or(1.0),
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
        "mirostat": 0,
        // The trainer's order: temperature before top-p (llama.cpp's
        // default chain applies top-p first).
        "samplers": ["top_k", "temperature", "top_p"],
        // llama.cpp's seed is a uint32; u32::MAX means "random".
        "seed": (r.seed as u32).min(u32::MAX - 1),
        "n_probs": 1,
        "post_sampling_probs": r.mode == LogprobsMode::Processed,
        "return_tokens": true,
        // llama.cpp stops at its model's end-of-generation tokens; without a
        // task eos it must not stop at all.
        "ignore_eos": r.eos.is_none(),
        "cache_prompt": true,
        "stream": false,
    })
}

/// `(prompt in the request, sample) → completion`, for each choice read.
pub type Choices = Vec<((usize, usize), Completion)>;

/// A malformed answer: what is wrong, for the error message.
#[derive(Debug)]
pub struct ShapeError(pub String);

fn token_id(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    v.as_str()?.strip_prefix("token_id:")?.parse().ok()
}

/// Reads a `/v1/completions` answer for a request of `prompts` prompts with
/// `n` samples each: `(prompt k, sample j) → completion` for every choice
/// present (a short list leaves the rest missing, to be asked again).
pub fn read_openai(answer: &Value, prompts: usize, n: usize) -> Result<Choices, ShapeError> {
    let choices = answer["choices"].as_array().ok_or_else(|| {
        ShapeError(
            match answer.get("error").or_else(|| answer.get("message")) {
                Some(e) => format!("no `choices`; the server said: {e}"),
                None => "no `choices` array".to_string(),
            },
        )
    })?;
    let mut out = Vec::with_capacity(choices.len());
    for (position, choice) in choices.iter().enumerate() {
        let index = choice["index"].as_u64().map_or(position, |i| i as usize);
        if index >= prompts * n {
            return Err(ShapeError(format!(
                "choices[{position}] has index {index}, beyond the {prompts} prompt(s) × n = {n} asked for"
            )));
        }
        let lp = &choice["logprobs"];
        let values = lp["token_logprobs"].as_array().ok_or_else(|| {
            ShapeError(format!(
                "choices[{position}] has no `logprobs.token_logprobs` (the request asks for `logprobs`: does this server support it?)"
            ))
        })?;
        let tokens: Vec<i64> = match choice["token_ids"].as_array() {
            Some(ids) => ids.iter().map(token_id).collect::<Option<_>>(),
            None => lp["tokens"]
                .as_array()
                .and_then(|t| t.iter().map(token_id).collect::<Option<_>>()),
        }
        .ok_or_else(|| {
            ShapeError(format!(
                "choices[{position}] gives no token ids: neither `token_ids` (vLLM ≥ 0.10.2, `return_token_ids`) \
                 nor `logprobs.tokens` as \"token_id:<id>\" (`return_tokens_as_token_ids`)"
            ))
        })?;
        let logprobs: Vec<f64> = values
            .iter()
            .enumerate()
            .map(|(t, v)| {
                v.as_f64().ok_or_else(|| {
                    ShapeError(format!(
                        "choices[{position}]: token {t}'s log-prob is {v}, not a number"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if logprobs.len() != tokens.len() {
            return Err(ShapeError(format!(
                "choices[{position}]: {} tokens but {} log-probs",
                tokens.len(),
                logprobs.len()
            )));
        }
        let finish = choice["finish_reason"]
            .as_str()
            .unwrap_or("(none)")
            .to_string();
        out.push((
            (index / n, index % n),
            Completion {
                tokens,
                logprobs,
                finish,
            },
        ));
    }
    Ok(out)
}

/// Reads a llama.cpp `/completion` answer (one sample). `eos` appends the
/// end token when the server stopped at it but left it out of `tokens`.
pub fn read_llama_cpp(answer: &Value, eos: Option<i64>) -> Result<Completion, ShapeError> {
    let probs = answer["completion_probabilities"].as_array().ok_or_else(|| {
        ShapeError("no `completion_probabilities` (the request sets `n_probs`: is this llama.cpp's `llama-server`?)".into())
    })?;
    let mut logprobs = Vec::with_capacity(probs.len());
    let mut prob_ids = Vec::with_capacity(probs.len());
    for (t, p) in probs.iter().enumerate() {
        let value = match (p["logprob"].as_f64(), p["prob"].as_f64()) {
            (Some(lp), _) => lp,
            (None, Some(prob)) => prob.ln(),
            _ => {
                return Err(ShapeError(format!(
                    "completion_probabilities[{t}] has neither `logprob` nor `prob`"
                )))
            }
        };
        logprobs.push(value);
        prob_ids.push(p["id"].as_i64());
    }
    let mut tokens: Vec<i64> = match answer["tokens"].as_array() {
        Some(ids) if !ids.is_empty() || probs.is_empty() => ids
            .iter()
            .map(Value::as_i64)
            .collect::<Option<_>>()
            .ok_or_else(|| ShapeError("`tokens` holds something other than ids".into()))?,
        _ => prob_ids
            .iter()
            .copied()
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ShapeError("no `tokens` (the request sets `return_tokens`) and no ids in `completion_probabilities`".into())
            })?,
    };
    let finish = answer["stop_type"].as_str().unwrap_or("(none)").to_string();
    if finish == "eos" && tokens.len() + 1 == logprobs.len() {
        if let (Some(e), Some(Some(last))) = (eos, prob_ids.last()) {
            if *last == e {
                tokens.push(e);
            }
        }
    }
    if logprobs.len() != tokens.len() {
        return Err(ShapeError(format!(
            "{} tokens but {} entries in `completion_probabilities`",
            tokens.len(),
            logprobs.len()
        )));
    }
    Ok(Completion {
        tokens,
        logprobs,
        finish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_choices_by_index_with_either_kind_of_token_ids() {
        let answer = json!({
            "object": "text_completion",
            "choices": [
                {"index": 1, "text": "", "finish_reason": "length", "token_ids": [5, 6],
                 "logprobs": {"tokens": ["token_id:5", "token_id:6"], "token_logprobs": [-0.5, -1.0],
                              "text_offset": [0, 0], "top_logprobs": [{"token_id:5": -0.5}, {"token_id:6": -1.0}]}},
                {"index": 0, "text": "", "finish_reason": "stop",
                 "logprobs": {"tokens": ["token_id:2"], "token_logprobs": [-0.25],
                              "text_offset": [0], "top_logprobs": [{"token_id:2": -0.25}]}},
            ]
        });
        let got = read_openai(&answer, 1, 2).unwrap();
        assert_eq!(got[0].0, (0, 1));
        assert_eq!(got[0].1.tokens, [5, 6]);
        assert_eq!(got[0].1.logprobs, [-0.5, -1.0]);
        assert_eq!(got[1].0, (0, 0));
        assert_eq!(got[1].1.tokens, [2]);
        assert_eq!(got[1].1.finish, "stop");
        let bad =
            json!({"choices": [{"index": 4, "logprobs": {"token_logprobs": []}, "token_ids": []}]});
        assert!(read_openai(&bad, 1, 2).unwrap_err().0.contains("index 4"));
        let no_ids = json!({"choices": [{"index": 0, "logprobs": {"tokens": ["hello"], "token_logprobs": [-1.0]}}]});
        assert!(read_openai(&no_ids, 1, 1)
            .unwrap_err()
            .0
            .contains("return_tokens_as_token_ids"));
    }

    #[test]
    fn reads_llama_cpp_raw_and_post_sampling_probabilities() {
        let raw = json!({"content": "", "tokens": [3, 4], "stop_type": "limit",
            "completion_probabilities": [{"id": 3, "token": "a", "logprob": -0.1, "top_logprobs": []},
                                         {"id": 4, "token": "b", "logprob": -0.2, "top_logprobs": []}]});
        let c = read_llama_cpp(&raw, Some(4)).unwrap();
        assert_eq!((c.tokens, c.logprobs), (vec![3, 4], vec![-0.1, -0.2]));
        // Stopped at eos, left out of `tokens`, present in the probabilities.
        let post = json!({"tokens": [3], "stop_type": "eos",
            "completion_probabilities": [{"id": 3, "prob": 0.5, "top_probs": []},
                                         {"id": 9, "prob": 0.25, "top_probs": []}]});
        let c = read_llama_cpp(&post, Some(9)).unwrap();
        assert_eq!(c.tokens, [3, 9]);
        assert!((c.logprobs[1] - 0.25f64.ln()).abs() < 1e-15);
    }
}
