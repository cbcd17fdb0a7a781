//! Parity with HF transformers 5.24.0 (torch 2.11.0, f32, CPU, eager attention)
//! on tiny random-initialised checkpoints written by
//! `tests/fixtures/make_fixtures.py`: full-sequence logits on a batch with a
//! left-padded and a right-padded row, sequence log-probs through core's one
//! log-prob kernel, and greedy decoding (KV cache) against `generate`.

mod common;

use align_core::logprob::{policy_logprobs, sequence_logprobs};
use align_core::sampling::sample;
use align_core::task::Prompt;
use align_core::SamplingConfig;
use align_models::{load, Architecture, DType};
use common::{assert_close, copy_dir, device, expected, expected_json, fixture};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

const TRANSFORMERS: &str = "5.24.0";
const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

fn check_causal(name: &str, arch: Architecture) {
    let meta = expected_json(name);
    assert_eq!(
        meta["transformers"], TRANSFORMERS,
        "{name} was made with another transformers version; update this test's header"
    );
    let lm = load(&fixture(name), DType::F32, device()).expect("fixture loads");
    assert_eq!(lm.architecture, arch);
    let e = expected(name);
    let (ids, mask) = (&e["input_ids"], &e["attention_mask"]);
    let logits = tch::no_grad(|| lm.policy.forward(ids, mask));
    // Padding positions are compared nowhere: their outputs are not used.
    let real = mask.ne(0).unsqueeze(-1);
    assert_close(
        &logits,
        &e["logits"],
        &real,
        RTOL,
        ATOL,
        &format!("{name} logits"),
    );

    let lp = sequence_logprobs(&logits, ids, &e["completion_mask"]);
    let all = Tensor::ones([3], (Kind::Bool, Device::Cpu));
    assert_close(
        &lp,
        &e["seq_logprobs"],
        &all,
        RTOL,
        0.0,
        &format!("{name} seq log-probs"),
    );

    // Greedy decoding from left-padded prompts, through the KV-cache decoder.
    let pids = &e["prompt_ids"];
    let pmask = &e["prompt_mask"];
    let prompts: Vec<Prompt> = (0..2)
        .map(|r| {
            let row = Vec::<i64>::try_from(pids.get(r).to_device(Device::Cpu)).unwrap();
            let m = Vec::<i64>::try_from(pmask.get(r).to_device(Device::Cpu)).unwrap();
            Prompt {
                ids: row
                    .into_iter()
                    .zip(m)
                    .filter(|(_, m)| *m == 1)
                    .map(|(t, _)| t)
                    .collect(),
                text: None,
            }
        })
        .collect();
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    };
    let want = &e["greedy"];
    let new = want.size()[1];
    let batch = sample(lm.policy.as_ref(), &prompts, 1, new, None, &greedy, 0);
    let t = batch.input_ids.size()[1];
    let got = batch.input_ids.narrow(1, t - new, new);
    assert_eq!(
        Vec::<Vec<i64>>::try_from(got.to_device(Device::Cpu)).unwrap(),
        Vec::<Vec<i64>>::try_from(want.to_device(Device::Cpu)).unwrap(),
        "{name}: greedy continuation differs from transformers generate"
    );
}

#[test]
fn llama_gqa_untied_matches_transformers() {
    check_causal("tiny-llama", Architecture::Llama);
}

#[test]
fn llama_tied_matches_transformers() {
    check_causal("tiny-llama-tied", Architecture::Llama);
}

/// Llama-3 RoPE scaling, with the fixture's frequencies in all three bands;
/// the same weights without the scaling give other logits, so the scaling
/// is what the comparison checks.
#[test]
fn llama3_rope_scaling_matches_transformers() {
    check_causal("tiny-llama3-rope", Architecture::Llama);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama3-rope"), dir.path());
    let config = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg["rope_parameters"]["rope_type"] = "default".into();
    std::fs::write(&config, cfg.to_string()).unwrap();
    let e = expected("tiny-llama3-rope");
    let plain = load(dir.path(), DType::F32, device()).unwrap();
    let logits = tch::no_grad(|| plain.policy.forward(&e["input_ids"], &e["attention_mask"]));
    let real = e["attention_mask"].ne(0).unsqueeze(-1);
    let gap = (logits - &e["logits"]).abs().masked_select(&real).max();
    assert!(
        gap.double_value(&[]) > 1e-3,
        "unscaled RoPE gives the same logits"
    );
}

/// The prior and proposal copies are made in memory: same logits, frozen,
/// independent of later updates to the source, and in the source's kind.
#[test]
fn frozen_clone_copies_weights_in_memory() {
    let e = expected("tiny-llama");
    let (ids, mask) = (&e["input_ids"], &e["attention_mask"]);
    for dtype in [DType::F32, DType::Bf16] {
        let mut lm = load(&fixture("tiny-llama"), dtype, device()).unwrap();
        let copy = lm
            .policy
            .frozen_clone()
            .expect("HF models clone in memory")
            .unwrap();
        let vars = copy.var_store().trainable_variables();
        assert!(
            !vars.is_empty() && vars.iter().all(|v| !v.requires_grad()),
            "copy is frozen"
        );
        let before = tch::no_grad(|| lm.policy.forward(ids, mask));
        let copied = tch::no_grad(|| copy.forward(ids, mask));
        assert_eq!(copied.kind(), before.kind());
        assert!(copied.equal(&before), "{dtype:?}: copy gives other logits");
        tch::no_grad(|| {
            for mut v in lm.policy.var_store_mut().trainable_variables() {
                let _ = v.f_mul_(&Tensor::from(0.5)).unwrap();
            }
        });
        let after = tch::no_grad(|| copy.forward(ids, mask));
        assert!(
            after.equal(&before),
            "{dtype:?}: copy shares storage with the source"
        );
    }
}

#[test]
fn llama_sharded_checkpoint_matches_single_file() {
    // Same weights as tiny-llama, saved in 4 shards with an index.
    let e = expected("tiny-llama");
    let lm = load(&fixture("tiny-llama-sharded"), DType::F32, device()).unwrap();
    let logits = tch::no_grad(|| lm.policy.forward(&e["input_ids"], &e["attention_mask"]));
    let real = e["attention_mask"].ne(0).unsqueeze(-1);
    assert_close(&logits, &e["logits"], &real, RTOL, ATOL, "sharded logits");
}

#[test]
fn gpt2_matches_transformers() {
    check_causal("tiny-gpt2", Architecture::Gpt2);
}

#[test]
fn gpt_neox_matches_transformers() {
    check_causal("tiny-gpt-neox", Architecture::GptNeoX);
}

#[test]
fn bert_matches_transformers() {
    assert_eq!(expected_json("tiny-bert")["transformers"], TRANSFORMERS);
    let (_vs, bert) =
        align_models::bert::Bert::from_dir(&fixture("tiny-bert"), DType::F32, device()).unwrap();
    let e = expected("tiny-bert");
    let mask = &e["attention_mask"];
    let hidden = tch::no_grad(|| bert.forward(&e["input_ids"], mask, Some(&e["token_type_ids"])));
    let real = mask.ne(0).unsqueeze(-1);
    assert_close(&hidden, &e["hidden"], &real, RTOL, ATOL, "bert hidden");
    let pooled = align_models::bert::Bert::mean_pool(&hidden, mask);
    let all = Tensor::ones([1], (Kind::Bool, Device::Cpu));
    assert_close(
        &pooled,
        &e["mean_pooled"],
        &all,
        RTOL,
        ATOL,
        "bert mean pooled",
    );
}

/// The KV-cache decoder and the full forward agree: sample with temperature,
/// top-k and top-p, then rescore the samples with `forward`.
#[test]
fn cached_sampling_logprobs_equal_full_forward_rescoring() {
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gpt-neox"] {
        let lm = load(&fixture(name), DType::F32, device()).unwrap();
        let prompts = vec![
            Prompt {
                ids: vec![5, 9, 40, 41, 7],
                text: None,
            },
            Prompt {
                ids: vec![12, 13],
                text: None,
            },
        ];
        let eos = Some(2);
        let cfg = SamplingConfig::default();
        let batch = sample(lm.policy.as_ref(), &prompts, 3, 12, eos, &cfg, 11);
        let rescored = tch::no_grad(|| policy_logprobs(lm.policy.as_ref(), &batch));
        let all = Tensor::ones([1], (Kind::Bool, Device::Cpu));
        assert_close(
            &batch.model_logp,
            &rescored,
            &all,
            1e-4,
            1e-4,
            &format!("{name} rescoring"),
        );
        // At temperature 1 without filtering, proposal = model.
        assert_close(
            &batch.proposal_logp,
            &batch.model_logp,
            &all,
            1e-5,
            1e-5,
            name,
        );
        // Same seed → same samples; another seed → different ones.
        let again = sample(lm.policy.as_ref(), &prompts, 3, 12, eos, &cfg, 11);
        assert!(
            again.input_ids.equal(&batch.input_ids),
            "{name}: not reproducible"
        );
        let other = sample(lm.policy.as_ref(), &prompts, 3, 12, eos, &cfg, 12);
        assert!(
            !other.input_ids.equal(&batch.input_ids),
            "{name}: seed ignored"
        );
    }
}

#[test]
fn bf16_and_f16_load_and_stay_close_to_f32() {
    let e = expected("tiny-llama");
    let real = e["attention_mask"].ne(0).unsqueeze(-1);
    for dtype in [DType::Bf16, DType::F16] {
        let lm = load(&fixture("tiny-llama"), dtype, device()).unwrap();
        let logits = tch::no_grad(|| lm.policy.forward(&e["input_ids"], &e["attention_mask"]));
        assert_eq!(logits.kind(), dtype.kind());
        let scale = e["logits"].abs().max().double_value(&[]);
        assert_close(
            &logits,
            &e["logits"],
            &real,
            0.0,
            0.05 * scale,
            &format!("{dtype:?}"),
        );
    }
}

/// The policy trains: a gradient step on the completion log-likelihood
/// reaches every parameter and raises the log-likelihood.
#[test]
fn gradients_flow_and_a_step_raises_the_likelihood() {
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gpt-neox"] {
        let lm = load(&fixture(name), DType::F32, device()).unwrap();
        let e = expected(name);
        let (ids, mask, cmask) = (&e["input_ids"], &e["attention_mask"], &e["completion_mask"]);
        let score =
            || sequence_logprobs(&lm.policy.forward(ids, mask), ids, cmask).sum(Kind::Float);
        let before = score();
        let mut opt = tch::nn::Sgd::default()
            .build(lm.policy.var_store(), 1e-3)
            .unwrap();
        opt.backward_step(&(-&before));
        for (n, v) in lm.policy.var_store().variables() {
            assert!(v.grad().defined(), "{name}: no gradient for {n}");
        }
        let after = tch::no_grad(score);
        assert!(
            after.double_value(&[]) > before.double_value(&[]),
            "{name}: one SGD step did not raise the log-likelihood"
        );
    }
}
