//! The `winrate-llm` evaluator end to end: the endpoint backend against a
//! small OpenAI-shaped server on 127.0.0.1 (verdicts in both orders, the
//! position-bias column, the cache, retries, the no-logprobs fallback), and
//! the local backend on the tiny Llama fixture.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use align_core::build::build_plugin;
use align_core::task::Prompt;
use align_core::{
    EvalContext, Evaluation, Evaluator, GoodnessModel, HeldOut, Policy, RewardModel, SampleBatch,
    SampleText, Task,
};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

// Linked for their registrations: this crate's evaluators, and the `hf`
// model plugin the local judge builds through the registry.
use align_evaluators as _;
use align_models as _;

// --- a context the evaluator does not read beyond its device ----------------

struct NoTask;
impl Task for NoTask {
    fn train_prompts(&self) -> &[Prompt] {
        &[]
    }
    fn eval_prompts(&self) -> &[Prompt] {
        &[]
    }
    fn max_new_tokens(&self) -> i64 {
        1
    }
}

struct NoPolicy(nn::VarStore);
impl Policy for NoPolicy {
    fn forward(&self, _: &Tensor, _: &Tensor) -> Tensor {
        unreachable!("the judge reads texts, not the policy")
    }
    fn vocab_size(&self) -> i64 {
        1
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.0
    }
    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.0
    }
}

struct NoReward;
impl RewardModel for NoReward {
    fn score(&self, batch: &SampleBatch) -> anyhow::Result<Tensor> {
        Ok(Tensor::zeros(
            [batch.len() as i64],
            (Kind::Float, Device::Cpu),
        ))
    }
}

struct NoGoodness;
impl GoodnessModel for NoGoodness {
    fn log_goodness(&self, reward: &Tensor, _: Option<&Tensor>) -> anyhow::Result<Tensor> {
        Ok(reward.shallow_clone())
    }
}

/// Judges `rows` of (prompt index, completion) against `gold` (one per prompt).
fn judge(
    evaluator: &dyn Evaluator,
    prompts: &[&str],
    rows: &[(usize, &str)],
    gold: &[&str],
) -> anyhow::Result<Evaluation> {
    let text = |p: usize, c: &str| SampleText {
        prompt: prompts[p].to_string(),
        completion: c.to_string(),
    };
    let mut batch =
        SampleBatch::from_texts(rows.iter().map(|&(p, c)| text(p, c)).collect(), Device::Cpu);
    batch.prompt_index = rows.iter().map(|&(p, _)| p).collect();
    let gold = SampleBatch::from_texts(
        gold.iter().enumerate().map(|(p, c)| text(p, c)).collect(),
        Device::Cpu,
    );
    let n = rows.len() as i64;
    let held_out = HeldOut {
        prompts: prompts
            .iter()
            .map(|p| Prompt {
                ids: Vec::new(),
                text: Some(p.to_string()),
            })
            .collect(),
        batch,
        gold: Some(gold),
        policy_logp: Tensor::zeros([n], (Kind::Double, Device::Cpu)),
        prior_logp: Tensor::zeros([n], (Kind::Double, Device::Cpu)),
        on_policy: true,
    };
    let policy = NoPolicy(nn::VarStore::new(Device::Cpu));
    let ctx = EvalContext {
        task: &NoTask,
        prior: &policy,
        reward: &NoReward,
        goodness: &NoGoodness,
        codec: None,
        device: Device::Cpu,
    };
    evaluator.evaluate(&ctx, &policy, Some(&held_out))
}

fn column<'a>(e: &'a Evaluation, name: &str) -> &'a [f64] {
    &e.columns
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no column `{name}` in {:?}", e.columns))
        .1
}

fn build(config: &str) -> anyhow::Result<Box<dyn Evaluator>> {
    let table: toml::Value = toml::from_str(config)?;
    Ok(build_plugin::<dyn Evaluator>("winrate-llm", table)?)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
    }
}

// --- a fake OpenAI-compatible server ------------------------------------------

enum Reply {
    Status(u16, Vec<(&'static str, &'static str)>, String),
    /// Close the connection without answering.
    Drop,
}

struct Server {
    base_url: String,
    requests: Arc<AtomicUsize>,
    /// Each answered request's headers (lower-cased) and JSON body.
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

/// Serves `script(request number, body)` on an ephemeral loopback port.
fn serve(script: impl Fn(usize, &Value) -> Reply + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (requests.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n = count.fetch_add(1, Ordering::SeqCst);
            match script(n, &body) {
                Reply::Drop => drop(stream),
                Reply::Status(status, headers, text) => {
                    log.lock().unwrap().push((head, body));
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                        text.len()
                    );
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&text);
                    let _ = stream.write_all(out.as_bytes());
                }
            }
        }
    });
    Server {
        base_url,
        requests,
        seen,
    }
}

/// The fake judge's answer to a judge prompt in the default template: a
/// response with "GOOD" beats one without, one with "BAD" loses, and
/// otherwise it picks the first shown (a pure position bias).
fn answer(body: &Value) -> &'static str {
    let prompt = body["messages"][0]["content"].as_str().unwrap_or("");
    let a = prompt.find("Response A:\n").expect("first response");
    let b = prompt.find("Response B:\n").expect("second response");
    let score = |t: &str| i32::from(t.contains("GOOD")) - i32::from(t.contains("BAD"));
    if score(&prompt[a..b]) >= score(&prompt[b..]) {
        "A"
    } else {
        "B"
    }
}

/// The chat-completions JSON for `token`, with or without log-probs.
fn completion(token: &str, logprobs: bool) -> String {
    let other = if token == "A" { "B" } else { "A" };
    let entry = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    let lp = json!({"content": [{
        "token": token, "logprob": -0.1, "bytes": token.as_bytes(),
        "top_logprobs": [entry(token, -0.1), entry(other, -2.4), entry(&format!(" {token}"), -3.0), entry("C", -5.0)],
    }]});
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "judge-1",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": token},
            "logprobs": if logprobs { lp } else { Value::Null },
            "finish_reason": "length",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })
    .to_string()
}

fn judging(logprobs: bool) -> impl Fn(usize, &Value) -> Reply {
    move |_, body| Reply::Status(200, Vec::new(), completion(answer(body), logprobs))
}

fn endpoint_config(server: &Server, cache: &Path, retries: u32) -> String {
    format!(
        r#"name = "gpt"
[backend.openai]
base_url = "{}"
model = "judge-1"
api_key_env = "WINRATE_LLM_TEST_NO_SUCH_KEY"
requests_per_minute = 60000
retries = {retries}
backoff_s = 0.01
timeout_s = 5
cache = "{}"
"#,
        server.base_url,
        cache.display()
    )
}

const PROMPTS: [&str; 2] = ["How do I boil an egg?", "Name a colour."];
const GOLD: [&str; 2] = ["plain gold", "GOOD gold"];
const ROWS: [(usize, &str); 4] = [
    (0, "GOOD answer"),
    (0, "plain reply"),
    (1, "BAD reply"),
    (1, "a plain one"),
];

/// P(first) when the judge answers with the first choice: "A" and " A"
/// pooled, renormalised against "B".
fn q() -> f64 {
    let a = ((-0.1f64).exp() + (-3.0f64).exp()).ln();
    1.0 / (1.0 + (-2.4 - a).exp())
}

#[test]
fn endpoint_verdicts_both_orders_and_the_cache() {
    let server = serve(judging(true));
    let dir = tempfile::tempdir().unwrap();
    let config = endpoint_config(&server, &dir.path().join("cache"), 0);
    let e = judge(build(&config).unwrap().as_ref(), &PROMPTS, &ROWS, &GOLD).unwrap();
    let q = q();
    assert_eq!(column(&e, "win_gpt"), [1.0, 0.5, 0.0, 0.0]);
    // Row 1 is a tie the judge breaks by position both times.
    assert_eq!(column(&e, "gpt_first"), [0.5, 1.0, 0.5, 0.5]);
    assert_close(column(&e, "gpt_prob"), &[q, 0.5, 1.0 - q, 1.0 - q], 1e-12);
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        8,
        "two orders per row"
    );

    let seen = server.seen.lock().unwrap().clone();
    let (head, body) = &seen[0];
    assert_eq!(body["model"], "judge-1");
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["temperature"], 0);
    assert_eq!(body["logprobs"], true);
    assert_eq!(body["top_logprobs"], 20);
    assert!(head.starts_with("post /v1/chat/completions "), "{head}");
    assert!(
        !head.contains("authorization"),
        "no key for a loopback server"
    );
    let prompt = body["messages"][0]["content"].as_str().unwrap();
    assert!(
        prompt.contains(
            "Query: How do I boil an egg?\n\nResponse A:\nGOOD answer\n\nResponse B:\nplain gold\n"
        ),
        "{prompt}"
    );
    // The second order shows gold first.
    let second = seen[4].1["messages"][0]["content"].as_str().unwrap();
    assert!(
        second.contains("Response A:\nplain gold\n\nResponse B:\nGOOD answer\n"),
        "{second}"
    );

    // A fresh evaluator on the same cache sends nothing.
    let again = judge(build(&config).unwrap().as_ref(), &PROMPTS, &ROWS, &GOLD).unwrap();
    assert_eq!(again, e);
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        8,
        "answered from the cache"
    );
    let files = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
    assert_eq!(files, 8, "one file per request");
}

#[test]
fn endpoint_without_logprobs_reads_the_answer_text() {
    let server = serve(judging(false));
    let dir = tempfile::tempdir().unwrap();
    let config = endpoint_config(&server, dir.path(), 0);
    let e = judge(build(&config).unwrap().as_ref(), &PROMPTS, &ROWS, &GOLD).unwrap();
    assert_eq!(column(&e, "win_gpt"), [1.0, 0.5, 0.0, 0.0]);
    assert_eq!(column(&e, "gpt_first"), [0.5, 1.0, 0.5, 0.5]);
    assert_eq!(column(&e, "gpt_prob"), [1.0, 0.5, 0.0, 0.0]);
}

#[test]
fn endpoint_retries_a_429_and_a_dropped_connection() {
    let inner = judging(true);
    let server = serve(move |n, body| match n {
        0 => Reply::Status(
            429,
            vec![("retry-after", "0")],
            r#"{"error":{"message":"slow down"}}"#.into(),
        ),
        1 => Reply::Drop,
        _ => inner(n, body),
    });
    let dir = tempfile::tempdir().unwrap();
    let config = endpoint_config(&server, dir.path(), 2);
    let e = judge(
        build(&config).unwrap().as_ref(),
        &PROMPTS,
        &ROWS[..1],
        &GOLD,
    )
    .unwrap();
    assert_eq!(column(&e, "win_gpt"), [1.0]);
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        4,
        "two failures, two answers"
    );
}

#[test]
fn endpoint_errors_name_the_url_and_status() {
    let server = serve(|_, _| Reply::Status(503, Vec::new(), "overloaded".into()));
    let dir = tempfile::tempdir().unwrap();
    let config = endpoint_config(&server, dir.path(), 2);
    let err = judge(
        build(&config).unwrap().as_ref(),
        &PROMPTS,
        &ROWS[..1],
        &GOLD,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("{}/chat/completions", server.base_url)),
        "{msg}"
    );
    assert!(
        msg.contains("after 3 attempts") && msg.contains("HTTP 503: overloaded"),
        "{msg}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);

    // A refusal that no retry cures stops at once.
    let server = serve(|_, _| Reply::Status(401, Vec::new(), "bad key".into()));
    let config = endpoint_config(&server, dir.path(), 2);
    let err = judge(
        build(&config).unwrap().as_ref(),
        &PROMPTS,
        &ROWS[..1],
        &GOLD,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("HTTP 401") && msg.contains("WINRATE_LLM_TEST_NO_SUCH_KEY"),
        "{msg}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn endpoint_sends_the_key_from_its_variable() {
    std::env::set_var("WINRATE_LLM_TEST_KEY", "sk-test");
    let server = serve(judging(true));
    let dir = tempfile::tempdir().unwrap();
    let config = endpoint_config(&server, dir.path(), 0)
        .replace("WINRATE_LLM_TEST_NO_SUCH_KEY", "WINRATE_LLM_TEST_KEY");
    judge(
        build(&config).unwrap().as_ref(),
        &PROMPTS,
        &ROWS[..1],
        &GOLD,
    )
    .unwrap();
    let seen = server.seen.lock().unwrap();
    assert!(
        seen[0].0.contains("authorization: bearer sk-test\r\n"),
        "{}",
        seen[0].0
    );
}

#[test]
fn settings_are_checked_when_built() {
    let err = |config: &str| build(config).err().expect("accepted").to_string();
    let e = err(r#"[backend.openai]
base_url = "https://judge.example.com/v1"
api_key_env = "WINRATE_LLM_TEST_NO_SUCH_KEY""#);
    assert!(
        e.contains("`WINRATE_LLM_TEST_NO_SUCH_KEY`") && e.contains("api_key_env"),
        "{e}"
    );
    let e = err(
        "template = \"{prompt} {first}\"\n[backend.openai]\nbase_url = \"http://127.0.0.1:9/v1\"",
    );
    assert!(e.contains("`template`") && e.contains("{second}"), "{e}");
    let e = err("choices = [\"A\"]\n[backend.openai]\nbase_url = \"http://127.0.0.1:9/v1\"");
    assert!(e.contains("`choices`"), "{e}");
    let e = err("[backend.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodle = \"x\"");
    assert!(e.contains("modle"), "{e}");
    let e = err("name = \"a b\"\n[backend.openai]\nbase_url = \"http://127.0.0.1:9/v1\"");
    assert!(e.contains("`name`"), "{e}");
    let e = err("[backend.local]\npath = \"/no/such/judge.gguf\"");
    assert!(
        e.contains("/no/such/judge.gguf") && e.contains("xtask setup"),
        "{e}"
    );
}

#[test]
fn evaluation_needs_text_and_gold() {
    let server = serve(judging(true));
    let dir = tempfile::tempdir().unwrap();
    let evaluator = build(&endpoint_config(&server, dir.path(), 0)).unwrap();
    let policy = NoPolicy(nn::VarStore::new(Device::Cpu));
    let ctx = EvalContext {
        task: &NoTask,
        prior: &policy,
        reward: &NoReward,
        goodness: &NoGoodness,
        codec: None,
        device: Device::Cpu,
    };
    let mut held_out = HeldOut {
        prompts: Vec::new(),
        batch: SampleBatch::from_texts(
            vec![SampleText {
                prompt: "p".into(),
                completion: "c".into(),
            }],
            Device::Cpu,
        ),
        gold: None,
        policy_logp: Tensor::zeros([1], (Kind::Double, Device::Cpu)),
        prior_logp: Tensor::zeros([1], (Kind::Double, Device::Cpu)),
        on_policy: true,
    };
    let err = evaluator
        .evaluate(&ctx, &policy, Some(&held_out))
        .unwrap_err();
    assert!(err.to_string().contains("no gold"), "{err}");
    held_out.batch.texts = None;
    let err = evaluator
        .evaluate(&ctx, &policy, Some(&held_out))
        .unwrap_err();
    assert!(err.to_string().contains("no tokenizer"), "{err}");
}

// --- the local backend ----------------------------------------------------------

fn local_config(batch_size: usize) -> String {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    format!(
        "[backend.local]\npath = \"{}\"\nbatch_size = {batch_size}\n",
        model.display()
    )
}

#[test]
fn local_judge_on_the_tiny_llama() {
    let prompts = ["hi", "a b"];
    let rows = [(0, "yes"), (0, "no no"), (1, "c")];
    let gold = ["ok", "d e f"];
    let one = build(&local_config(1)).unwrap();
    let e = judge(one.as_ref(), &prompts, &rows, &gold).unwrap();
    let (win, first, prob) = (
        column(&e, "win_llm"),
        column(&e, "llm_first"),
        column(&e, "llm_prob"),
    );
    assert_eq!((win.len(), first.len(), prob.len()), (3, 3, 3));
    for i in 0..3 {
        assert!([0.0, 0.5, 1.0].contains(&win[i]), "{win:?}");
        assert!([0.0, 0.25, 0.5, 0.75, 1.0].contains(&first[i]), "{first:?}");
        assert!(
            (0.0..=1.0).contains(&prob[i]) && prob[i].is_finite(),
            "{prob:?}"
        );
    }

    // Swapping which response is the policy's swaps the two orders: the
    // judge prompts are the same, so the verdicts mirror exactly. (One gold
    // per prompt, so row by row.)
    for (r, &(p, completion)) in rows.iter().enumerate() {
        let mut swapped_gold = gold;
        swapped_gold[p] = completion;
        let s = judge(one.as_ref(), &prompts, &[(p, gold[p])], &swapped_gold).unwrap();
        assert_close(column(&s, "win_llm"), &[1.0 - win[r]], 0.0);
        assert_close(column(&s, "llm_first"), &[first[r]], 0.0);
        assert_close(column(&s, "llm_prob"), &[1.0 - prob[r]], 1e-9);
    }

    // Left-padded batches give what one prompt at a time gives.
    let batched = judge(
        build(&local_config(4)).unwrap().as_ref(),
        &prompts,
        &rows,
        &gold,
    )
    .unwrap();
    assert_close(column(&batched, "llm_prob"), prob, 1e-4);
}

/// The default judge (SmolLM2-135M-Instruct, installed by `cargo xtask
/// setup`) reads the default template through its chat template.
#[test]
fn default_local_judge() {
    let home = std::env::var_os("HOME").unwrap_or_default();
    let model = Path::new(&home).join(".cache/brain-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!(
            "SKIPPED default_local_judge: {} not found; run `cargo xtask setup`",
            model.display()
        );
        return;
    }
    let prompts = ["What is the capital of France?"];
    let rows = [
        (0, "The capital of France is Paris."),
        (0, "I like turtles."),
    ];
    let gold = ["Paris is the capital of France."];
    let e = judge(build("").unwrap().as_ref(), &prompts, &rows, &gold).unwrap();
    eprintln!("{:?}", e.columns);
    for (_, values) in &e.columns {
        assert_eq!(values.len(), 2);
        assert!(
            values.iter().all(|v| (0.0..=1.0).contains(v)),
            "{:?}",
            e.columns
        );
    }
}

/// Paths start at the manifest's directory, and the resolved settings (what
/// the runner writes next to results) carry every default.
#[test]
fn resolved_settings_fill_defaults_and_resolve_paths() {
    use align_core::build::build_plugin_at;
    use align_core::manifest::PathBase;
    use align_core::registry::Registry;
    let dir = tempfile::tempdir().unwrap();
    let base = PathBase::new(dir.path());
    let table: toml::Value = toml::from_str(
        "[backend.openai]\nbase_url = \"http://localhost:8000/v1\"\ncache = \"judged\"",
    )
    .unwrap();
    let (_, resolved) =
        build_plugin_at::<dyn Evaluator>(Registry::global(), "winrate-llm", table, &base).unwrap();
    let openai = &resolved["backend"]["openai"];
    assert_eq!(resolved["name"].as_str(), Some("llm"));
    assert_eq!(resolved["choices"], toml::Value::from(vec!["A", "B"]));
    assert_eq!(openai["model"].as_str(), Some("gpt-4o"));
    assert_eq!(openai["retries"].as_integer(), Some(5));
    let cache = dir.path().join("judged");
    assert_eq!(openai["cache"].as_str(), Some(cache.to_str().unwrap()));

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests");
    let table: toml::Value =
        toml::from_str("[backend.local]\npath = \"fixtures/tiny-llama\"").unwrap();
    let (_, resolved) = build_plugin_at::<dyn Evaluator>(
        Registry::global(),
        "winrate-llm",
        table,
        &PathBase::new(&fixtures),
    )
    .unwrap();
    let local = &resolved["backend"]["local"];
    let path = fixtures.join("fixtures/tiny-llama");
    assert_eq!(local["path"].as_str(), Some(path.to_str().unwrap()));
    assert_eq!(local["dtype"].as_str(), Some("f32"));
}

#[test]
fn endpoint_requests_are_paced() {
    let server = serve(judging(true));
    let dir = tempfile::tempdir().unwrap();
    let config = endpoint_config(&server, dir.path(), 0)
        .replace("requests_per_minute = 60000", "requests_per_minute = 1200");
    let evaluator = build(&config).unwrap();
    let start = std::time::Instant::now();
    judge(evaluator.as_ref(), &PROMPTS, &ROWS[..2], &GOLD).unwrap();
    // Four requests, 50 ms apart.
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
}
