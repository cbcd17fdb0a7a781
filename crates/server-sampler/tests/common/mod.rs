//! A stand-in inference server on 127.0.0.1 that answers in vLLM's
//! `/v1/completions` and llama.cpp's `/completion` JSON shapes, sampling
//! from a tiny random policy so that the log-probs it reports are the true
//! ones; and that policy as the trainer sees it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use align_core::{Policy, SamplingConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

pub const VOCAB: i64 = 7;

/// Logits at position t: a row for token t plus, when token t − 1 is real
/// (attention mask 1), a row for it, so left padding must be masked right.
pub struct Weights {
    pub unigram: Tensor,
    pub bigram: Tensor,
}

impl Weights {
    /// Random weights from `seed` (not LibTorch's global generator, which
    /// tests running in parallel share).
    pub fn random(seed: u64) -> Weights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut table = |scale: f32| {
            let values: Vec<f32> = (0..VOCAB * VOCAB)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect();
            Tensor::from_slice(&values).view([VOCAB, VOCAB])
        };
        Weights {
            unigram: table(3.0),
            bigram: table(2.0),
        }
    }

    pub fn copy(&self) -> Weights {
        Weights {
            unigram: self.unigram.copy(),
            bigram: self.bigram.copy(),
        }
    }

    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t) = ids.size2().unwrap();
        let now = self
            .unigram
            .index_select(0, &ids.reshape([-1]))
            .view([b, t, VOCAB]);
        let zero = Tensor::zeros([b, 1], (Kind::Int64, Device::Cpu));
        let prev = Tensor::cat(&[&zero, &ids.narrow(1, 0, t - 1)], 1);
        let prev_mask = Tensor::cat(&[&zero, &mask.narrow(1, 0, t - 1)], 1).to_kind(Kind::Float)
            * mask.to_kind(Kind::Float);
        let before = self
            .bigram
            .index_select(0, &prev.reshape([-1]))
            .view([b, t, VOCAB]);
        now + before * prev_mask.unsqueeze(-1)
    }
}

pub struct TinyPolicy {
    pub vs: nn::VarStore,
    pub weights: Weights,
    /// What `export` writes (names of subdirectories), for refresh tests.
    pub exports: Vec<&'static str>,
    /// Whether `save_hf` writes an HF directory (a `config.json` here).
    pub hf: bool,
}

/// The tiny policy for a stand-in server.
pub fn served(seed: u64) -> Box<dyn Policy> {
    Box::new(TinyPolicy::new(Weights::random(seed)))
}

impl TinyPolicy {
    pub fn new(weights: Weights) -> TinyPolicy {
        TinyPolicy {
            vs: nn::VarStore::new(Device::Cpu),
            weights,
            exports: Vec::new(),
            hf: false,
        }
    }
}

impl Policy for TinyPolicy {
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        self.weights.forward(ids, mask)
    }
    fn vocab_size(&self) -> i64 {
        VOCAB
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
    fn export(&self, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
        for sub in &self.exports {
            std::fs::create_dir_all(dir.join(sub))?;
            std::fs::write(dir.join(sub).join("weights.txt"), "tiny")?;
        }
        Ok(self.exports.iter().map(|s| s.to_string()).collect())
    }
    fn save_hf(&self, dir: &std::path::Path) -> anyhow::Result<bool> {
        if self.hf {
            std::fs::write(dir.join("config.json"), "{\"tiny\": true}")?;
        }
        Ok(self.hf)
    }
}

/// What the stand-in does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Serve,
    /// Reads the request, then closes the connection without an answer.
    Drop,
    /// Answers with this HTTP status and an error body.
    Status(u16),
    /// Serves, adding this to every reported token log-prob.
    Skew(f64),
    /// Serves only the first `k` prompts' choices.
    Short(usize),
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub body: Value,
    pub action: Action,
}

impl Logged {
    /// The request's prompts (token ids).
    pub fn prompts(&self) -> Vec<Vec<i64>> {
        let p = &self.body["prompt"];
        let list = |v: &Value| -> Vec<i64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_i64().unwrap())
                .collect()
        };
        match p.as_array() {
            Some(items) if items.first().is_some_and(Value::is_array) => {
                items.iter().map(list).collect()
            }
            Some(_) => vec![list(p)],
            None => Vec::new(),
        }
    }
}

pub type Behaviour = Box<dyn Fn(usize, &Logged) -> Action + Send>;

pub struct Options {
    /// Report processed (true) or raw (false) log-probs.
    pub processed: bool,
    /// Leave out `token_ids` (vLLM before 0.10.2): ids only as "token_id:N".
    pub old_vllm: bool,
    /// The served model's end-of-generation token (llama.cpp stops at it).
    pub model_eos: Option<i64>,
    pub behaviour: Behaviour,
    /// SGLang's `/update_weights_from_disk`: the model its `model_path`
    /// holds, served from then on (`None`: the weights stay, the answer is
    /// still a success, as a server that silently kept its weights).
    pub load: Option<Loader>,
}

pub type Loader = Box<dyn Fn(&std::path::Path) -> Box<dyn Policy> + Send>;

/// The model at `path` (an HF directory or a GGUF file), f32 on the CPU:
/// what the stand-in serves and the trainer's copy of it.
pub fn load_model(path: &std::path::Path) -> Box<dyn Policy> {
    align_models::load(path, align_models::DType::F32, Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
        .policy
}

/// The tiny Llama of `tests/fixtures`.
pub fn tiny_llama() -> Box<dyn Policy> {
    load_model(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama"),
    )
}

impl Options {
    /// A stand-in that loads each HF directory SGLang's reload names
    /// ([`load_model`]) and serves it from then on.
    pub fn reloading() -> Options {
        Options {
            load: Some(Box::new(load_model)),
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            processed: true,
            old_vllm: false,
            model_eos: None,
            behaviour: Box::new(|_, _| Action::Serve),
            load: None,
        }
    }
}

pub struct StandIn {
    pub url: String,
    pub log: Arc<Mutex<Vec<Logged>>>,
}

impl StandIn {
    /// Serves `policy` (any model: the tiny table one or a Llama) on a free port.
    pub fn start(policy: Box<dyn Policy>, options: Options) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        std::thread::spawn(move || {
            let mut policy = policy;
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                if let Some(loaded) = serve(i, stream, policy.as_ref(), &options, &shared) {
                    policy = loaded;
                }
            }
        });
        StandIn { url, log }
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// The completion requests' prompts, one list per request.
    pub fn completion_prompts(&self) -> Vec<Vec<Vec<i64>>> {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("completions") || r.path == "/completion")
            .map(Logged::prompts)
            .collect()
    }
}

/// A port nothing listens on.
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, String::from_utf8(body).ok()?))
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// Answers one request; returns the model to serve from now on when the
/// request loaded one.
fn serve(
    i: usize,
    mut stream: TcpStream,
    weights: &dyn Policy,
    o: &Options,
    log: &Mutex<Vec<Logged>>,
) -> Option<Box<dyn Policy>> {
    let (path, body) = read_request(&mut stream)?;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut logged = Logged {
        path: path.clone(),
        body,
        action: Action::Serve,
    };
    logged.action = (o.behaviour)(i, &logged);
    log.lock().unwrap().push(logged.clone());
    match &logged.action {
        Action::Drop => return None, // closes the connection unanswered
        Action::Status(s) => {
            let err = json!({"object": "error", "message": "overloaded", "type": "ServiceUnavailable", "code": s});
            respond(&mut stream, *s, "application/json", &err.to_string());
            return None;
        }
        _ => {}
    }
    match path.as_str() {
        "/v1/completions" => {
            let answer = vllm_answer(weights, o, &logged);
            respond(&mut stream, 200, "application/json", &answer.to_string());
        }
        "/completion" => {
            let answer = llama_cpp_answer(weights, o, &logged);
            respond(&mut stream, 200, "application/json", &answer.to_string());
        }
        "/v1/load_lora_adapter" | "/v1/unload_lora_adapter" => {
            let name = logged.body["lora_name"].as_str().unwrap_or("");
            respond(
                &mut stream,
                200,
                "text/plain",
                &format!("Success: LoRA adapter '{name}' done."),
            );
        }
        "/update_weights_from_disk" => {
            let loaded = o.load.as_ref().map(|load| {
                let dir = logged.body["model_path"].as_str().unwrap_or_default();
                load(std::path::Path::new(dir))
            });
            let answer = json!({"success": true, "message": "Succeeded to update model weights."});
            respond(&mut stream, 200, "application/json", &answer.to_string());
            return loaded;
        }
        _ => respond(
            &mut stream,
            404,
            "application/json",
            r#"{"detail":"Not Found"}"#,
        ),
    }
    None
}

/// One sample from `prompt`: tokens, reported log-probs, and whether it
/// stopped at a stop token.
#[allow(clippy::too_many_arguments)]
fn generate(
    weights: &dyn Policy,
    prompt: &[i64],
    max_tokens: i64,
    config: &SamplingConfig,
    stop: &[i64],
    processed: bool,
    skew: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<i64>, Vec<f64>, bool) {
    let _guard = tch::no_grad_guard();
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    let mut lps = Vec::new();
    for _ in 0..max_tokens {
        let t = ids.len() as i64;
        let x = Tensor::from_slice(&ids).view([1, t]);
        let mask = x.ones_like();
        let last = weights.forward(&x, &mask).select(1, t - 1); // [1, V]
        let raw = last.log_softmax(-1, Kind::Float);
        let (token, q) = if config.temperature == 0.0 {
            (raw.argmax(-1, false).int64_value(&[0]), raw.shallow_clone())
        } else {
            let q = config.sampling_logprobs(&last);
            let p = Vec::<f32>::try_from(q.exp().view([-1])).unwrap();
            let u: f32 = rng.random_range(0.0..1.0);
            let mut acc = 0.0;
            let mut token = p.len() as i64 - 1;
            for (k, &pk) in p.iter().enumerate() {
                acc += pk;
                if pk > 0.0 && u < acc {
                    token = k as i64;
                    break;
                }
            }
            (token, q)
        };
        let reported = if processed { &q } else { &raw };
        lps.push(reported.double_value(&[0, token]) + skew);
        out.push(token);
        ids.push(token);
        if stop.contains(&token) {
            return (out, lps, true);
        }
    }
    (out, lps, false)
}

fn config_of(body: &Value, top_k_off: i64) -> SamplingConfig {
    SamplingConfig {
        temperature: body["temperature"].as_f64().unwrap_or(1.0),
        top_k: body["top_k"].as_i64().filter(|&k| k != top_k_off && k > 0),
        top_p: body["top_p"].as_f64().filter(|&p| p < 1.0),
    }
}

fn vllm_answer(weights: &dyn Policy, o: &Options, r: &Logged) -> Value {
    let body = &r.body;
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let max_tokens = body["max_tokens"].as_i64().unwrap_or(16);
    let config = config_of(body, -1);
    let stop: Vec<i64> = body["stop_token_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let seed = body["seed"].as_u64().unwrap_or(0);
    let skew = match r.action {
        Action::Skew(s) => s,
        _ => 0.0,
    };
    let mut prompts = r.prompts();
    if let Action::Short(k) = r.action {
        prompts.truncate(k);
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for prompt in &prompts {
        // vLLM seeds each prompt's request with the request's seed.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        prompt_tokens += prompt.len();
        for _ in 0..n {
            let (tokens, lps, stopped) = generate(
                weights,
                prompt,
                max_tokens,
                &config,
                &stop,
                o.processed,
                skew,
                &mut rng,
            );
            completion_tokens += tokens.len();
            let names: Vec<String> = tokens.iter().map(|t| format!("token_id:{t}")).collect();
            let top: Vec<Value> = names
                .iter()
                .zip(&lps)
                .map(|(name, lp)| json!({ name.as_str(): lp }))
                .collect();
            let mut choice = json!({
                "index": choices.len(),
                "text": "",
                "logprobs": {
                    "text_offset": vec![0; tokens.len()],
                    "token_logprobs": lps,
                    "tokens": names,
                    "top_logprobs": top,
                },
                "finish_reason": if stopped { "stop" } else { "length" },
                "stop_reason": if stopped { json!(tokens.last()) } else { Value::Null },
                "prompt_logprobs": null,
            });
            if !o.old_vllm && body["return_token_ids"] == json!(true) {
                choice["token_ids"] = json!(tokens);
                choice["prompt_token_ids"] = json!(prompt);
            }
            choices.push(choice);
        }
    }
    json!({
        "id": "cmpl-standin",
        "object": "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })
}

fn llama_cpp_answer(weights: &dyn Policy, o: &Options, r: &Logged) -> Value {
    let body = &r.body;
    let prompt = r.prompts().remove(0);
    let max_tokens = body["n_predict"].as_i64().unwrap_or(-1);
    let config = config_of(body, 0);
    let post = body["post_sampling_probs"] == json!(true);
    let ignore_eos = body["ignore_eos"] == json!(true);
    let stop: Vec<i64> = match (ignore_eos, o.model_eos) {
        (false, Some(e)) => vec![e],
        _ => Vec::new(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(body["seed"].as_u64().unwrap_or(0));
    let skew = match r.action {
        Action::Skew(s) => s,
        _ => 0.0,
    };
    let (tokens, lps, stopped) = generate(
        weights, &prompt, max_tokens, &config, &stop, post, skew, &mut rng,
    );
    let probs: Vec<Value> = tokens
        .iter()
        .zip(&lps)
        .map(|(t, lp)| {
            if post {
                json!({"id": t, "token": format!("<{t}>"), "bytes": [60], "prob": lp.exp(),
                       "top_probs": [{"id": t, "token": format!("<{t}>"), "bytes": [60], "prob": lp.exp()}]})
            } else {
                json!({"id": t, "token": format!("<{t}>"), "bytes": [60], "logprob": lp,
                       "top_logprobs": [{"id": t, "token": format!("<{t}>"), "bytes": [60], "logprob": lp}]})
            }
        })
        .collect();
    json!({
        "index": 0,
        "content": "",
        "tokens": if body["return_tokens"] == json!(true) { json!(tokens) } else { json!([]) },
        "id_slot": 0,
        "stop": true,
        "model": "standin",
        "tokens_predicted": tokens.len(),
        "tokens_evaluated": prompt.len(),
        "stop_type": if stopped { "eos" } else { "limit" },
        "stopping_word": "",
        "completion_probabilities": probs,
    })
}
