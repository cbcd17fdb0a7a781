//! The server sampler against stand-in servers on 127.0.0.1 that answer in
//! vLLM's and llama.cpp's JSON shapes with the true log-probs of a tiny
//! random policy (the trainer holds the same policy).

mod common;

use std::collections::HashMap;

use align_core::logprob::{policy_logprobs, sampling_logprobs};
use align_core::task::Prompt;
use align_core::SamplingConfig;
use align_distributed::Single;
use common::{closed_port_url, served, Action, Options, StandIn, TinyPolicy, Weights};
use server_sampler::{
    Api, LogprobsMode, OnDisagreement, ProposalConfig, Reload, ServerSampler, ServerSamplerConfig,
};

const EOS: i64 = 1;

fn prompts(k: usize) -> Vec<Prompt> {
    (0..k)
        .map(|i| Prompt {
            // Different lengths, so the batch left-pads.
            ids: (0..1 + i % 3).map(|t| ((i + t) % 5 + 2) as i64).collect(),
            text: None,
        })
        .collect()
}

fn filtered() -> SamplingConfig {
    SamplingConfig {
        temperature: 0.8,
        top_k: Some(5),
        top_p: Some(0.9),
    }
}

fn config(urls: Vec<String>) -> ServerSamplerConfig {
    let mut c = ServerSamplerConfig::new(urls, "tiny");
    c.retries = 2;
    c.backoff_s = 0.01;
    c.timeout_s = 20.0;
    c.concurrency = 2;
    c.rescore_rows = 5; // several recomputation chunks
    c
}

fn completions_of(batch: &align_core::SampleBatch) -> Vec<Vec<i64>> {
    batch.completions()
}

/// Round trip: the samples come back prompt-major with the server's tokens,
/// the proposal log-density equals `sampling_logprobs` of the trainer's
/// policy exactly, the model log-density `policy_logprobs`, and the
/// server's values agree with them.
#[test]
fn round_trip_recomputes_exactly_and_agrees_with_the_server() {
    let server = StandIn::start(served(1), Options::default());
    let policy = TinyPolicy::new(Weights::random(1));
    let mut c = config(vec![server.url.clone()]);
    c.prompts_per_request = 2;
    let sampler = ServerSampler::new(c).unwrap();
    let ps = prompts(5);
    let sampling = filtered();
    let out = sampler
        .draw("tiny", &policy, &ps, 3, 6, Some(EOS), &sampling, 7)
        .unwrap();
    let batch = &out.batch;
    assert_eq!(batch.len(), 15);
    assert_eq!(
        batch.prompt_index,
        (0..5).flat_map(|p| [p, p, p]).collect::<Vec<_>>()
    );
    // Prompts left-padded in front of each row.
    let ids = Vec::<i64>::try_from(batch.input_ids.view([-1])).unwrap();
    let t = batch.input_ids.size()[1] as usize;
    let tp = 3;
    for (row, &p) in batch.prompt_index.iter().enumerate() {
        let prompt = &ps[p].ids;
        assert_eq!(&ids[row * t + tp - prompt.len()..row * t + tp], &prompt[..]);
    }
    // Each completion ends at eos or runs to max_new_tokens.
    let completions = completions_of(batch);
    for c in &completions {
        assert!(c.len() == 6 || c.last() == Some(&EOS), "{c:?}");
        assert!(c[..c.len() - 1].iter().all(|&t| t != EOS), "{c:?}");
    }
    assert!(
        completions.iter().any(|c| c.len() < 6) && completions.iter().any(|c| c.len() == 6),
        "both kinds of ending occur: {completions:?}"
    );
    // Five prompts, two per request: three requests, each prompt once.
    let asked = server.completion_prompts();
    assert_eq!(asked.len(), 3);
    assert!(asked.iter().all(|r| r.len() <= 2), "{asked:?}");
    let mut all = asked.concat();
    all.sort();
    let mut want: Vec<Vec<i64>> = ps.iter().map(|p| p.ids.clone()).collect();
    want.sort();
    assert_eq!(all, want);
    // The request carries the sampling settings and asks for token ids.
    let body = &server.requests()[0].body;
    assert_eq!(body["n"], 3);
    assert_eq!(body["max_tokens"], 6);
    assert_eq!(body["top_k"], 5);
    assert_eq!(body["stop_token_ids"], serde_json::json!([EOS]));
    assert_eq!(body["ignore_eos"], true);
    assert_eq!(body["return_token_ids"], true);

    let exact = sampling_logprobs(&policy, batch, &sampling);
    assert!(
        batch.proposal_logp.equal(&exact),
        "{:?} vs {exact:?}",
        batch.proposal_logp
    );
    let model = policy_logprobs(&policy, batch);
    assert!(batch.model_logp.equal(&model));
    assert!(!batch
        .model_logp
        .allclose(&batch.proposal_logp, 1e-3, 1e-3, false));

    let r = &out.report;
    assert_eq!(r.server_logp.len(), 15);
    assert!(r.max_abs_diff < 1e-4, "{r:?}");
    assert!(r.mean_abs_diff <= r.max_abs_diff);
    let proposal = Vec::<f64>::try_from(batch.proposal_logp.to_kind(tch::Kind::Double)).unwrap();
    assert_eq!(r.trainer_logp, proposal);
    for (s, q) in r.server_logp.iter().zip(&proposal) {
        assert!((s - q).abs() < 1e-4, "{s} vs {q}");
    }
    assert_eq!(r.servers[0].requests, 3);
    assert_eq!(r.servers[0].prompts, 5);

    // The same call asks the same questions: the same samples.
    let again = sampler
        .draw("tiny", &policy, &ps, 3, 6, Some(EOS), &sampling, 7)
        .unwrap();
    assert_eq!(completions_of(&again.batch), completions);
    let other = sampler
        .draw("tiny", &policy, &ps, 3, 6, Some(EOS), &sampling, 8)
        .unwrap();
    assert_ne!(completions_of(&other.batch), completions);
}

/// Raw log-probs (vLLM's default) are compared with the model's density;
/// greedy decoding records proposal density 0, as the in-process sampler.
#[test]
fn raw_logprobs_and_greedy_decoding_compare_with_the_model_density() {
    let server = StandIn::start(
        served(2),
        Options {
            processed: false,
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(2));
    let mut c = config(vec![server.url.clone()]);
    c.logprobs_mode = LogprobsMode::Raw;
    let sampler = ServerSampler::new(c).unwrap();
    let ps = prompts(3);
    let out = sampler
        .draw("tiny", &policy, &ps, 2, 5, Some(EOS), &filtered(), 3)
        .unwrap();
    assert!(out.report.max_abs_diff < 1e-4, "{:?}", out.report);
    let model = Vec::<f64>::try_from(out.batch.model_logp.to_kind(tch::Kind::Double)).unwrap();
    assert_eq!(out.report.trainer_logp, model);

    let greedy = SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let out = sampler
        .draw("tiny", &policy, &ps, 1, 5, None, &greedy, 3)
        .unwrap();
    assert_eq!(
        out.batch
            .proposal_logp
            .abs()
            .sum(tch::Kind::Float)
            .double_value(&[]),
        0.0
    );
    assert!(out.report.max_abs_diff < 1e-4, "{:?}", out.report);
    assert!(completions_of(&out.batch).iter().all(|c| c.len() == 5));
    // Greedy: each row is the argmax continuation, whatever the seed.
    let again = sampler
        .draw("tiny", &policy, &ps, 1, 5, None, &greedy, 99)
        .unwrap();
    assert_eq!(completions_of(&again.batch), completions_of(&out.batch));
}

/// Two servers share the prompts: each prompt is asked for exactly once,
/// both servers answer, and a server of the older vLLM shape (token ids as
/// "token_id:N" strings only) reads the same.
#[test]
fn two_servers_share_the_prompts() {
    let a = StandIn::start(served(3), Options::default());
    let b = StandIn::start(
        served(3),
        Options {
            old_vllm: true,
            // Slow enough that the other server takes its share.
            behaviour: Box::new(|_, _| {
                std::thread::sleep(std::time::Duration::from_millis(30));
                Action::Serve
            }),
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(3));
    let mut c = config(vec![a.url.clone(), format!("{}/v1/", b.url)]);
    c.prompts_per_request = 1;
    c.concurrency = 1;
    let sampler = ServerSampler::new(c).unwrap();
    let ps = prompts(8);
    let out = sampler
        .draw("tiny", &policy, &ps, 2, 4, Some(EOS), &filtered(), 5)
        .unwrap();
    let (asked_a, asked_b) = (a.completion_prompts(), b.completion_prompts());
    assert!(
        !asked_a.is_empty() && !asked_b.is_empty(),
        "{asked_a:?} {asked_b:?}"
    );
    let mut all: Vec<Vec<i64>> = asked_a.concat();
    all.extend(asked_b.concat());
    let mut want: Vec<Vec<i64>> = ps.iter().map(|p| p.ids.clone()).collect();
    all.sort();
    want.sort();
    assert_eq!(all, want, "every prompt exactly once");
    let r = &out.report;
    assert_eq!(r.servers[0].prompts + r.servers[1].prompts, 8);
    assert_eq!(r.servers[0].prompts, asked_a.len());
    assert_eq!(r.servers[1].url, format!("{}/v1/completions", b.url));
    assert!(r.served_by.contains(&0) && r.served_by.contains(&1));
    assert!(r.max_abs_diff < 1e-4, "{r:?}");
    let exact = sampling_logprobs(&policy, &out.batch, &filtered());
    assert!(out.batch.proposal_logp.equal(&exact));
}

/// A server that drops a connection and answers one request with 503: the
/// retries succeed, and only the missing prompts are asked for again.
#[test]
fn dropped_connections_are_retried_and_only_missing_prompts_asked_again() {
    let ps = prompts(6);
    let (p2, p4) = (ps[2].ids.clone(), ps[4].ids.clone());
    let failed = std::sync::Mutex::new((false, false));
    let server = StandIn::start(
        served(4),
        Options {
            behaviour: Box::new(move |_, r| {
                let asked = r.prompts();
                let mut f = failed.lock().unwrap();
                if asked.contains(&p2) && !f.0 {
                    f.0 = true;
                    return Action::Drop;
                }
                if asked.contains(&p4) && !f.1 {
                    f.1 = true;
                    return Action::Status(503);
                }
                Action::Serve
            }),
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(4));
    let mut c = config(vec![server.url.clone()]);
    c.prompts_per_request = 2;
    let sampler = ServerSampler::new(c).unwrap();
    let out = sampler
        .draw("tiny", &policy, &ps, 2, 4, Some(EOS), &filtered(), 11)
        .unwrap();
    let mut counts: HashMap<Vec<Vec<i64>>, usize> = HashMap::new();
    for asked in server.completion_prompts() {
        *counts.entry(asked).or_default() += 1;
    }
    let chunk = |i: usize| vec![ps[i].ids.clone(), ps[i + 1].ids.clone()];
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!(counts[&chunk(0)], 1);
    assert_eq!(counts[&chunk(2)], 2);
    assert_eq!(counts[&chunk(4)], 2);
    let s = &out.report.servers[0];
    assert_eq!((s.requests, s.failed, s.prompts), (5, 2, 6));
    assert!(s.gave_up.is_none());
    assert_eq!(out.batch.len(), 12);
    assert!(out.report.max_abs_diff < 1e-4);
    // The retried requests gave what a server without failures gives.
    let clean = StandIn::start(served(4), Options::default());
    let mut c = config(vec![clean.url.clone()]);
    c.prompts_per_request = 2;
    let reference = ServerSampler::new(c)
        .unwrap()
        .draw("tiny", &policy, &ps, 2, 4, Some(EOS), &filtered(), 11)
        .unwrap();
    assert_eq!(completions_of(&out.batch), completions_of(&reference.batch));
}

/// An answer that leaves prompts out: only those are asked for again.
#[test]
fn a_short_answer_asks_again_for_the_prompts_it_left_out() {
    let server = StandIn::start(
        served(5),
        Options {
            behaviour: Box::new(|i, _| {
                if i == 0 {
                    Action::Short(1)
                } else {
                    Action::Serve
                }
            }),
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(5));
    let mut c = config(vec![server.url.clone()]);
    c.prompts_per_request = 4;
    c.concurrency = 1;
    let sampler = ServerSampler::new(c).unwrap();
    let ps = prompts(4);
    let out = sampler
        .draw("tiny", &policy, &ps, 2, 4, Some(EOS), &filtered(), 2)
        .unwrap();
    let asked = server.completion_prompts();
    let ids: Vec<Vec<i64>> = ps.iter().map(|p| p.ids.clone()).collect();
    assert_eq!(asked, vec![ids.clone(), ids[1..].to_vec()]);
    assert_eq!(out.batch.len(), 8);
    assert_eq!(out.report.servers[0].prompts, 4);
}

/// A server whose log-probs are off by 0.3 nats a token is detected: the
/// error names the server, the prompt and the two values.
#[test]
fn a_server_with_wrong_logprobs_is_detected_and_reported() {
    let server = StandIn::start(
        served(6),
        Options {
            behaviour: Box::new(|_, _| Action::Skew(0.3)),
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(6));
    let ps = prompts(3);
    let sampler = ServerSampler::new(config(vec![server.url.clone()])).unwrap();
    let err = sampler
        .draw("tiny", &policy, &ps, 2, 5, Some(EOS), &filtered(), 4)
        .unwrap_err()
        .to_string();

    let mut warn = config(vec![server.url.clone()]);
    warn.on_disagreement = OnDisagreement::Warn;
    let out = ServerSampler::new(warn)
        .unwrap()
        .draw("tiny", &policy, &ps, 2, 5, Some(EOS), &filtered(), 4)
        .unwrap();
    let r = &out.report;
    let lengths: Vec<usize> = completions_of(&out.batch).iter().map(Vec::len).collect();
    for (row, len) in lengths.iter().enumerate() {
        let d = r.server_logp[row] - r.trainer_logp[row];
        assert!((d - 0.3 * *len as f64).abs() < 1e-4, "row {row}: {d}");
    }
    assert!(r.max_abs_diff > 0.3);
    // Row 0 (sample 0 of prompt 0, ≥ 1 token: 0.3 > 0.1 + 0.01) is the
    // first beyond the tolerance.
    for part in [
        format!("{}/v1/completions", server.url),
        "sample 0 of prompt 0 (ids [2])".to_string(),
        format!(
            "the server's log-density of sample 0 of prompt 0 (ids [2]) is {:.6}",
            r.server_logp[0]
        ),
        format!(
            "the trainer's proposal (after temperature, top-k, top-p) log-density is {:.6}",
            r.trainer_logp[0]
        ),
        "beyond tolerance".to_string(),
    ] {
        assert!(err.contains(&part), "`{part}` not in: {err}");
    }
}

/// A server down for good: after the retries, the error names its URL.
#[test]
fn a_server_down_for_good_is_named_after_the_retries() {
    let url = closed_port_url();
    let policy = TinyPolicy::new(Weights::random(7));
    let mut c = config(vec![url.clone()]);
    c.concurrency = 1;
    let sampler = ServerSampler::new(c).unwrap();
    let err = sampler
        .draw(
            "tiny",
            &policy,
            &prompts(2),
            2,
            4,
            Some(EOS),
            &filtered(),
            1,
        )
        .unwrap_err()
        .to_string();
    for part in [
        "no server could be reached".to_string(),
        "2 of 2 prompts have no samples".to_string(),
        format!("{url}/v1/completions: no answer after 3 attempts (`retries` = 2)"),
    ] {
        assert!(err.contains(&part), "`{part}` not in: {err}");
    }
}

/// One of two servers down: the other takes all the prompts.
#[test]
fn the_other_server_takes_the_work_of_a_dead_one() {
    let dead = closed_port_url();
    let alive = StandIn::start(served(8), Options::default());
    let policy = TinyPolicy::new(Weights::random(8));
    let mut c = config(vec![dead.clone(), alive.url.clone()]);
    c.prompts_per_request = 1;
    let sampler = ServerSampler::new(c).unwrap();
    let ps = prompts(4);
    let out = sampler
        .draw("tiny", &policy, &ps, 1, 3, Some(EOS), &filtered(), 1)
        .unwrap();
    let r = &out.report;
    assert!(r.servers[0]
        .gave_up
        .as_deref()
        .unwrap()
        .contains("no answer after 3 attempts"));
    assert_eq!((r.servers[0].prompts, r.servers[1].prompts), (0, 4));
    assert!(r.served_by.iter().all(|&s| s == 1));
    assert_eq!(alive.completion_prompts().len(), 4);
}

/// A refused request (4xx) stops at once, naming the server and the model.
#[test]
fn a_refused_request_is_not_retried() {
    let server = StandIn::start(
        served(9),
        Options {
            behaviour: Box::new(|_, _| Action::Status(404)),
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(9));
    let mut c = config(vec![server.url.clone()]);
    c.concurrency = 1;
    c.prompts_per_request = 8;
    let err = ServerSampler::new(c)
        .unwrap()
        .draw(
            "nope",
            &policy,
            &prompts(2),
            1,
            3,
            Some(EOS),
            &filtered(),
            1,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}/v1/completions refused", server.url)),
        "{err}"
    );
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(server.completion_prompts().len(), 1);
}

/// llama.cpp's `/completion`: one sample a request, post-sampling
/// probabilities, the model's end token.
#[test]
fn llama_cpp_server_round_trip() {
    let server = StandIn::start(
        served(10),
        Options {
            model_eos: Some(EOS),
            ..Options::default()
        },
    );
    let policy = TinyPolicy::new(Weights::random(10));
    let mut c = config(vec![server.url.clone()]);
    c.api = Api::LlamaCpp;
    let sampler = ServerSampler::new(c).unwrap();
    let ps = prompts(3);
    let out = sampler
        .draw("tiny", &policy, &ps, 2, 6, Some(EOS), &filtered(), 5)
        .unwrap();
    assert_eq!(server.completion_prompts().len(), 6);
    let body = &server.requests()[0].body;
    assert_eq!(body["post_sampling_probs"], true);
    assert_eq!(
        body["samplers"],
        serde_json::json!(["top_k", "temperature", "top_p"])
    );
    assert!(out.report.max_abs_diff < 1e-4, "{:?}", out.report);
    let exact = sampling_logprobs(&policy, &out.batch, &filtered());
    assert!(out.batch.proposal_logp.equal(&exact));
    assert!(completions_of(&out.batch)
        .iter()
        .all(|c| c.len() == 6 || c.last() == Some(&EOS)));
}

/// A refresh exports the policy and has vLLM load it as a LoRA adapter
/// under a new name, which later draws ask for; the previous one is unloaded.
#[test]
fn a_refresh_loads_the_exported_adapter_and_samples_from_it() {
    let server = StandIn::start(served(11), Options::default());
    let mut policy = TinyPolicy::new(Weights::random(11));
    policy.exports = vec!["adapter"];
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(vec![server.url.clone()]);
    c.proposal = Some(ProposalConfig {
        proposal_model: "proposal".into(),
        export_dir: dir.path().to_path_buf(),
        server_export_dir: Some("/mnt/shared/exports/".into()),
        reload: Reload::VllmLora,
    });
    let sampler = ServerSampler::new(c).unwrap();
    assert_eq!(sampler.served_model(), "tiny");
    let exported = sampler.refresh(&policy, 1, &Single).unwrap();
    assert_eq!(exported, dir.path().join("proposal-1"));
    assert!(exported.join("adapter/weights.txt").exists());
    sampler.refresh(&policy, 2, &Single).unwrap();
    assert_eq!(sampler.served_model(), "proposal-2");
    assert!(!exported.exists(), "the unloaded adapter's export was kept");
    assert!(dir.path().join("proposal-2/adapter").is_dir());
    let ps = prompts(2);
    sampler
        .sample(&policy, &ps, 1, 3, Some(EOS), &filtered(), 1)
        .unwrap();
    sampler
        .sample_prior(&policy, &ps, 1, 3, Some(EOS), &filtered(), 1)
        .unwrap();
    assert!(sampler.last_report().unwrap().max_abs_diff < 1e-4);
    let log: Vec<(String, serde_json::Value)> = server
        .requests()
        .into_iter()
        .map(|r| (r.path, r.body))
        .collect();
    let lora = |name: &str, path: &str| serde_json::json!({"lora_name": name, "lora_path": path});
    assert_eq!(
        log[0],
        (
            "/v1/load_lora_adapter".into(),
            lora("proposal-1", "/mnt/shared/exports/proposal-1/adapter")
        )
    );
    assert_eq!(
        log[1],
        (
            "/v1/load_lora_adapter".into(),
            lora("proposal-2", "/mnt/shared/exports/proposal-2/adapter")
        )
    );
    assert_eq!(log[2].0, "/v1/unload_lora_adapter");
    assert_eq!(log[2].1["lora_name"], "proposal-1");
    assert_eq!(log[3].1["model"], "proposal-2");
    assert_eq!(log[4].1["model"], "tiny");

    // A policy without an adapter cannot be loaded as one.
    let plain = TinyPolicy::new(Weights::random(11));
    let err = format!("{:#}", sampler.refresh(&plain, 3, &Single).unwrap_err());
    assert!(
        err.contains("has none") && err.contains("lora") && err.contains("sglang-update-weights"),
        "{err}"
    );
}

/// With SGLang a refresh writes the whole model as an HF directory (which
/// appears only once complete) and has every server load it from disk; the
/// requests then ask for the served model by its name, which stays.
#[test]
fn a_sglang_refresh_loads_the_whole_model_from_disk() {
    let servers = [
        StandIn::start(served(11), Options::default()),
        StandIn::start(served(11), Options::default()),
    ];
    let mut policy = TinyPolicy::new(Weights::random(11));
    policy.hf = true;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(servers.iter().map(|s| s.url.clone()).collect());
    c.proposal = Some(ProposalConfig {
        proposal_model: "proposal".into(),
        export_dir: dir.path().join("exports"),
        server_export_dir: None,
        reload: Reload::SglangUpdateWeights,
    });
    let sampler = ServerSampler::new(c).unwrap();
    let exported = sampler.refresh(&policy, 4, &Single).unwrap();
    assert_eq!(exported, dir.path().join("exports/proposal-4"));
    assert!(exported.join("config.json").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["proposal-4"], "no temporary directory left");
    // Redone (a resumed run refreshes again): replaced.
    sampler.refresh(&policy, 4, &Single).unwrap();
    for s in &servers {
        let log = s.requests();
        assert_eq!(log.len(), 2, "one load per refresh");
        for r in &log {
            assert_eq!(r.path, "/update_weights_from_disk");
            assert_eq!(
                r.body,
                serde_json::json!({"model_path": exported.display().to_string()})
            );
        }
    }
    assert_eq!(sampler.served_model(), "tiny");
    // The next refresh replaces the previous export on disk.
    let next = sampler.refresh(&policy, 6, &Single).unwrap();
    assert!(next.join("config.json").is_file());
    assert!(!exported.exists(), "the previous export was kept");
    let ps = prompts(2);
    sampler
        .sample(&policy, &ps, 1, 3, Some(EOS), &filtered(), 1)
        .unwrap();
    assert!(servers
        .iter()
        .flat_map(|s| s.requests())
        .filter(|r| r.path == "/v1/completions")
        .all(|r| r.body["model"] == "tiny"));

    // A policy with no HF form is refused, nothing left on disk.
    let plain = TinyPolicy::new(Weights::random(11));
    let err = format!("{:#}", sampler.refresh(&plain, 5, &Single).unwrap_err());
    assert!(err.contains("no HF form"), "{err}");
    assert!(!dir.path().join("exports/proposal-5").exists());
}

/// The settings' errors name the key and the fix.
#[test]
fn settings_errors_name_the_key_and_the_fix() {
    let check = |toml_text: &str| -> String {
        let c: ServerSamplerConfig = toml::from_str(toml_text).unwrap();
        c.validate("sampler.server").unwrap_err().to_string()
    };
    let e = check("urls = []\nmodel = \"m\"");
    assert!(e.starts_with("`sampler.server.urls`: no server"), "{e}");
    let e = check("urls = [\"http://a:1\", \"localhost:8000\"]\nmodel = \"m\"");
    assert!(
        e.starts_with("`sampler.server.urls[1]`") && e.contains("http://"),
        "{e}"
    );
    let e = check("urls = [\"http://a:1/v1\", \"http://a:1\"]\nmodel = \"m\"");
    assert!(
        e.contains("urls[1]") && e.contains("list each server once"),
        "{e}"
    );
    let e = check("urls = [\"http://a:1\"]\nmodel = \"m\"\ntolerance = -1.0");
    assert!(e.starts_with("`sampler.server.tolerance`"), "{e}");
    let e = check("urls = [\"http://a:1\"]\nmodel = \"m\"\ntimeout_s = 0.0");
    assert!(
        e.starts_with("`sampler.server.timeout_s`") && e.contains("> 0"),
        "{e}"
    );
    let e = check(
        "urls = [\"http://a:1\"]\nmodel = \"m\"\napi = \"llama-cpp\"\n\
         proposal = { proposal_model = \"q\", export_dir = \"/x\", reload = \"vllm-lora\" }",
    );
    assert!(e.starts_with("`sampler.server.proposal.reload`"), "{e}");
    let e = check(
        "urls = [\"http://a:1\"]\nmodel = \"m\"\n\
         proposal = { proposal_model = \"a/b\", export_dir = \"/x\", reload = \"external\" }",
    );
    assert!(
        e.starts_with("`sampler.server.proposal.proposal_model`"),
        "{e}"
    );
    let unknown = toml::from_str::<ServerSamplerConfig>("urls = []\nmodel = \"m\"\nretry = 3");
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown field `retry`"));
    let ok: ServerSamplerConfig = toml::from_str(
        "urls = [\"http://a:1\", \"https://b\"]\nmodel = \"m\"\nlogprobs_mode = \"raw\"",
    )
    .unwrap();
    ok.validate("sampler.server").unwrap();
    assert_eq!(ok.logprobs_mode, LogprobsMode::Raw);
    assert_eq!(ok.retries, 4);
}

/// A real architecture: the tiny random Llama fixture served by the
/// stand-in (unpadded, one sequence at a time) and recomputed by the
/// trainer's copy (left-padded batches with an attention mask).
#[test]
fn a_served_llama_is_recomputed_exactly() {
    let server = StandIn::start(common::tiny_llama(), Options::default());
    let policy = common::tiny_llama();
    let mut c = config(vec![server.url.clone()]);
    c.prompts_per_request = 2;
    // One recomputation pass: a batched matmul's rounding depends on the
    // batch, and the check below is for equality with one pass.
    c.rescore_rows = 64;
    let sampler = ServerSampler::new(c).unwrap();
    let ps: Vec<Prompt> = [vec![0i64, 17, 45, 99], vec![0, 5], vec![0, 250, 3]]
        .into_iter()
        .map(|ids| Prompt { ids, text: None })
        .collect();
    let sampling = SamplingConfig {
        temperature: 0.7,
        top_k: Some(40),
        top_p: Some(0.95),
    };
    let out = sampler
        .draw(
            "tiny-llama",
            policy.as_ref(),
            &ps,
            2,
            5,
            Some(2),
            &sampling,
            3,
        )
        .unwrap();
    assert_eq!(out.batch.len(), 6);
    assert!(out.report.max_abs_diff < 1e-3, "{:?}", out.report);
    // The trainer computes proposal densities without gradient (the Llama's
    // inference path), as the in-process sampler does.
    let _guard = tch::no_grad_guard();
    let exact = sampling_logprobs(policy.as_ref(), &out.batch, &sampling);
    assert!(out.batch.proposal_logp.equal(&exact));
    let model = policy_logprobs(policy.as_ref(), &out.batch);
    assert!(out.batch.model_logp.equal(&model));
}

/// Data parallelism: ranks that each ask for their block of a call's
/// prompts (`sample_part`) get, end to end, the whole call's samples (and
/// densities, to rounding: other batches pad otherwise), also where a block cuts a request of `prompts_per_request`
/// prompts in two, and with llama.cpp's one-sample requests.
#[test]
fn a_ranks_block_of_a_call_draws_what_the_whole_call_draws() {
    use align_core::sampling::Part;
    for api in [Api::Openai, Api::LlamaCpp] {
        let server = StandIn::start(
            served(12),
            Options {
                model_eos: Some(EOS),
                ..Options::default()
            },
        );
        let policy = TinyPolicy::new(Weights::random(12));
        let mut c = config(vec![server.url.clone()]);
        c.api = api;
        c.prompts_per_request = 2;
        let sampler = ServerSampler::new(c).unwrap();
        let ps = prompts(5);
        let whole = sampler
            .sample(&policy, &ps, 2, 5, Some(EOS), &filtered(), 9)
            .unwrap();
        for cuts in [vec![0, 3, 5], vec![0, 1, 4, 5]] {
            let mut completions = Vec::new();
            let mut logp = Vec::new();
            for w in cuts.windows(2) {
                let part = Part {
                    first: w[0],
                    total: 5,
                };
                let block = sampler
                    .sample_part(
                        &policy,
                        false,
                        &ps[w[0]..w[1]],
                        2,
                        5,
                        Some(EOS),
                        &filtered(),
                        9,
                        part,
                    )
                    .unwrap();
                completions.extend(completions_of(&block));
                logp.extend(
                    Vec::<f64>::try_from(block.proposal_logp.to_kind(tch::Kind::Double)).unwrap(),
                );
            }
            assert_eq!(
                completions,
                completions_of(&whole),
                "{api:?}, blocks {cuts:?}"
            );
            let want =
                Vec::<f64>::try_from(whole.proposal_logp.to_kind(tch::Kind::Double)).unwrap();
            // Recomputed by the trainer in other batches (other padding):
            // equal to rounding.
            for (a, b) in logp.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{api:?}, blocks {cuts:?}: {a} vs {b}"
                );
            }
        }
        // Not a test that cannot fail: another seed draws other samples.
        let other = sampler
            .sample(&policy, &ps, 2, 5, Some(EOS), &filtered(), 10)
            .unwrap();
        assert_ne!(completions_of(&other), completions_of(&whole), "{api:?}");
    }
}
