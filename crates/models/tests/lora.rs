//! LoRA adapters on the tiny Llama fixture: a fresh adapter (B = 0) gives
//! the base model's logits and log-probs bit for bit; training moves the
//! adapters only (the base tensors, shared with the prior, stay bit-identical
//! and the prior's outputs unchanged); a copy (a proposal refresh) copies the
//! adapters only; the PEFT files have PEFT's names, shapes and config keys
//! and reload to the same log-probs; merging folds the update into the
//! weights; malformed adapters and settings are refused naming what is wrong.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use align_core::manifest::Optimizer as OptimizerKind;
use align_core::optim::Optimizer;
use align_core::{ModelContext, ModelSpec, Policy};
use align_models::hf::{HfModelConfig, HfSpec};
use align_models::lora::{self, LoraConfig, LoraModel, Target};
use align_models::{load, DType};
use common::{device, expected, fixture};
use tch::{Kind, Tensor};

fn config(rank: i64, targets: &[Target]) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        targets: targets.to_vec(),
        merge: false,
    }
}

fn prior(dtype: DType, cfg: &LoraConfig) -> LoraModel {
    lora::build(&fixture("tiny-llama"), dtype, device(), Some(cfg), None, 7).unwrap()
}

/// The fixture's batch (a left- and a right-padded row).
fn batch() -> (Tensor, Tensor, Tensor) {
    let e = expected("tiny-llama");
    (
        e["input_ids"].shallow_clone(),
        e["attention_mask"].shallow_clone(),
        e["completion_mask"].shallow_clone(),
    )
}

fn logprobs(p: &dyn Policy) -> Tensor {
    let (ids, mask, comp) = batch();
    p.sequence_logprobs(&ids, &mask, &comp)
}

fn logits(p: &dyn Policy) -> Tensor {
    let (ids, mask, _) = batch();
    tch::no_grad(|| p.forward(&ids, &mask))
}

/// Every variable of `vs` by name, copied.
fn snapshot(p: &dyn Policy) -> BTreeMap<String, Tensor> {
    p.var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.kind() == b.kind() && a.size() == b.size() && {
        // Compare bit patterns, so -0.0 ≠ +0.0 and NaN = NaN count too.
        let bits = |t: &Tensor| match t.kind() {
            Kind::Float => t.view_dtype(Kind::Int),
            _ => t.view_dtype(Kind::Int16),
        };
        bits(&a.contiguous()).equal(&bits(&b.contiguous()))
    }
}

/// Two Adam steps on the policy's log-probs of the batch.
fn train(policy: &mut dyn Policy, steps: usize) {
    policy.var_store_mut().unfreeze();
    let mut opt = Optimizer::new(OptimizerKind::Adam, policy.var_store(), 0.05).unwrap();
    for _ in 0..steps {
        let loss = -logprobs(policy).sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        assert!(opt.update_is_finite());
        opt.step();
    }
}

#[test]
fn fresh_adapters_give_the_base_log_probs_bit_for_bit() {
    for dtype in [DType::F32, DType::Bf16] {
        let plain = load(&fixture("tiny-llama"), dtype, device())
            .unwrap()
            .policy;
        let cfg = config(4, &Target::ALL);
        let prior = prior(dtype, &cfg);
        assert!(
            prior.adapters().is_empty(),
            "the prior has its adapters off"
        );
        let mut policy = prior.copy().unwrap();
        let adapters = policy.adapters();
        assert_eq!(
            adapters.len(),
            2 * 7,
            "{dtype:?}: every projection of both layers"
        );
        for (module, ad) in &adapters {
            assert_eq!(ad.a.kind(), dtype.kind(), "{module}");
            assert!(
                ad.a.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{module}: A drawn"
            );
            assert_eq!(
                ad.b.abs().sum(Kind::Float).double_value(&[]),
                0.0,
                "{module}: B zero"
            );
        }
        let want_logits = logits(plain.as_ref());
        let want = tch::no_grad(|| logprobs(plain.as_ref()));
        for (what, p) in [("prior", &prior as &dyn Policy), ("policy", &policy)] {
            assert!(
                bit_equal(&logits(p), &want_logits),
                "{dtype:?} {what}: logits"
            );
            let got = tch::no_grad(|| logprobs(p));
            assert!(
                bit_equal(&got, &want),
                "{dtype:?} {what}: {got:?} vs {want:?}"
            );
        }
        // With autograd on and the adapters trainable (a training forward),
        // on a batch of more than `FEW_ROWS` tokens: every product is then
        // LibTorch's in both models (below it, which products take the
        // decoding kernel depends on what records gradients, in plain
        // fine-tuning as here).
        policy.var_store_mut().unfreeze();
        let (ids, mask, comp) = batch();
        let big = |t: &Tensor| Tensor::cat(&[t, t, t, t], 0);
        assert!(big(&ids).numel() as i64 > align_models::common::FEW_ROWS);
        let plain_grad = plain
            .sequence_logprobs(&big(&ids), &big(&mask), &big(&comp))
            .detach();
        let got = policy.sequence_logprobs(&big(&ids), &big(&mask), &big(&comp));
        assert!(got.requires_grad());
        assert!(
            bit_equal(&got.detach(), &plain_grad),
            "{dtype:?}: training forward"
        );
        // The KV-cache decoder (what the sampler uses): prefill and a step.
        let (ids, mask, _) = batch();
        let prompt = ids.narrow(1, 0, 4);
        let pmask = Tensor::ones_like(&prompt);
        tch::no_grad(|| {
            let mut a = plain.decoder().unwrap();
            let mut b = policy.decoder().unwrap();
            assert!(bit_equal(
                &a.prefill(&prompt, &pmask),
                &b.prefill(&prompt, &pmask)
            ));
            let tok = ids.select(1, 4);
            let m = mask.narrow(1, 0, 5).ones_like();
            assert!(
                bit_equal(&a.step(&tok, &m), &b.step(&tok, &m)),
                "{dtype:?}: step"
            );
        });
    }
}

/// Adapter weights as PEFT draws them: `A` ~ U(±1/√in), seeded (the same
/// seed and module give the same draw, another seed another one).
#[test]
fn lora_a_is_drawn_like_peft_from_the_seed() {
    let cfg = config(8, &[Target::QProj, Target::DownProj]);
    let draw = |seed| {
        lora::fresh_adapter(
            &cfg,
            seed,
            "model.layers.0.mlp.down_proj",
            (64, 32),
            Kind::Float,
            device(),
        )
    };
    let (a, again, other) = (draw(1), draw(1), draw(2));
    assert!(a.a.equal(&again.a));
    assert!(!a.a.equal(&other.a));
    assert_eq!(a.a.size(), [8, 64]);
    assert_eq!(a.b.size(), [32, 8]);
    let bound = 1.0 / 64f64.sqrt();
    let max = a.a.abs().max().double_value(&[]);
    assert!(
        max <= bound && max > 0.9 * bound,
        "max |A| {max}, bound {bound}"
    );
    let mean = a.a.mean(Kind::Float).double_value(&[]);
    assert!(mean.abs() < 0.1 * bound, "mean {mean}");
    // Default settings are PEFT's for Llama.
    let d: LoraConfig = serde_json::from_str("{}").unwrap();
    assert_eq!((d.rank, d.alpha, d.dropout), (8, 8.0, 0.0));
    assert_eq!(d.targets, [Target::QProj, Target::VProj]);
}

#[test]
fn training_moves_only_the_adapters() {
    for dtype in [DType::F32, DType::Bf16] {
        training_moves_only_the_adapters_in(dtype);
    }
}

fn training_moves_only_the_adapters_in(dtype: DType) {
    let cfg = config(4, &[Target::QProj, Target::VProj, Target::UpProj]);
    let prior = prior(dtype, &cfg);
    let base_before = snapshot(&prior);
    let prior_lp = tch::no_grad(|| logprobs(&prior));
    let mut policy = prior.copy().unwrap();

    // The policy's variables are its adapters, nothing else.
    let names: Vec<String> = policy.var_store().variables().into_keys().collect();
    assert_eq!(names.len(), 2 * 3 * 2);
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("base_model.model.model.layers.")
                && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight"))),
        "{names:?}"
    );
    // The base weights are the prior's tensors (same storage), frozen.
    let shared: BTreeMap<String, Tensor> = prior.model().base_weights().into_iter().collect();
    for (name, w) in policy.model().base_weights() {
        assert_eq!(
            w.data_ptr(),
            shared[&name].data_ptr(),
            "{name} is not shared"
        );
        assert!(!w.requires_grad(), "{name} is trainable");
    }

    train(&mut policy, 3);

    for (module, ad) in policy.adapters() {
        assert!(
            ad.b.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{module}: B moved"
        );
    }
    let after = snapshot(&prior);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        base_before.keys().collect::<Vec<_>>()
    );
    for (name, t) in &after {
        assert!(
            bit_equal(t, &base_before[name]),
            "base tensor {name} changed"
        );
    }
    for (name, w) in policy.model().base_weights() {
        assert!(!w.grad().defined(), "{name} got a gradient");
    }
    let prior_after = tch::no_grad(|| logprobs(&prior));
    assert!(
        bit_equal(&prior_after, &prior_lp),
        "the prior's log-probs moved"
    );
    let policy_lp = tch::no_grad(|| logprobs(&policy));
    let gain = (&policy_lp - &prior_lp).sum(Kind::Float).double_value(&[]);
    assert!(gain > 0.0, "training raised the log-probs: {gain}");

    // A proposal refresh: a frozen copy with the same outputs, its own
    // copy of the adapters and the same base tensors.
    let q = policy.copy().unwrap();
    assert!(bit_equal(&logits(&q), &logits(&policy)));
    assert_eq!(q.var_store().variables().len(), names.len());
    assert!(q
        .var_store()
        .trainable_variables()
        .iter()
        .all(|v| !v.requires_grad()));
    for ((m, a), (_, b)) in q.adapters().iter().zip(policy.adapters()) {
        assert_ne!(a.a.data_ptr(), b.a.data_ptr(), "{m}: A shared, not copied");
        assert_ne!(a.b.data_ptr(), b.b.data_ptr(), "{m}: B shared, not copied");
    }
    for (name, w) in q.model().base_weights() {
        assert_eq!(w.data_ptr(), shared[&name].data_ptr(), "{name} copied");
    }
    let q_before = logits(&q);
    train(&mut policy, 1);
    assert!(
        bit_equal(&logits(&q), &q_before),
        "the copy follows later updates"
    );
}

/// Dropout acts in training forwards only, with masks that are a function
/// of the seed, the tokens and the adapters' weights (no global RNG).
#[test]
fn dropout_only_in_training_and_replayable() {
    let mut cfg = config(4, &[Target::QProj, Target::VProj]);
    cfg.dropout = 0.5;
    let prior = prior(DType::F32, &cfg);
    let mut policy = prior.copy().unwrap();
    train(&mut policy, 1); // B ≠ 0, so dropout changes the output
    let eval = tch::no_grad(|| logprobs(&policy));
    let t1 = logprobs(&policy).detach();
    tch::manual_seed(12345); // the global generator plays no part
    let t2 = logprobs(&policy).detach();
    assert!(bit_equal(&t1, &t2), "same weights and tokens, same masks");
    assert!(
        !bit_equal(&t1, &eval),
        "dropout acted in the training forward"
    );
    let copy = policy.copy().unwrap(); // frozen: no dropout
    assert!(bit_equal(&tch::no_grad(|| logprobs(&copy)), &eval));
    let eval_again = logprobs(&copy).detach(); // grad on, but frozen adapters
    assert!(bit_equal(&eval_again, &eval));
    // The next step's weights draw other masks.
    train(&mut policy, 1);
    let t3 = logprobs(&policy).detach();
    let t3_eval = tch::no_grad(|| logprobs(&policy));
    assert!(!bit_equal(&t3, &t3_eval));
}

/// Nonzero adapters (trained), saved as PEFT does and reloaded.
fn trained(cfg: &LoraConfig) -> LoraModel {
    let mut policy = prior(DType::F32, cfg).copy().unwrap();
    train(&mut policy, 2);
    policy
}

#[test]
fn saved_adapter_has_pefts_layout_and_reloads_to_the_same_log_probs() {
    let cfg = config(4, &[Target::QProj, Target::VProj, Target::DownProj]);
    let policy = trained(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let wrote = policy.export(dir.path()).unwrap();
    assert_eq!(wrote, ["adapter"]);
    let adapter = dir.path().join("adapter");

    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["task_type"], "CAUSAL_LM");
    assert_eq!(peft["r"], 4);
    assert_eq!(peft["lora_alpha"], 8.0);
    assert_eq!(peft["lora_dropout"], 0.0);
    assert_eq!(peft["bias"], "none");
    assert_eq!(
        peft["target_modules"],
        serde_json::json!(["down_proj", "q_proj", "v_proj"])
    );
    assert_eq!(
        peft["base_model_name_or_path"],
        fixture("tiny-llama").display().to_string()
    );
    let tensors = Tensor::read_safetensors(adapter.join("adapter_model.safetensors")).unwrap();
    let shapes: BTreeMap<String, Vec<i64>> =
        tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    // tiny-llama: hidden 32, 4 heads × 8, 2 KV heads × 8, intermediate 64.
    let mut want = BTreeMap::new();
    for i in 0..2 {
        let p = format!("base_model.model.model.layers.{i}");
        for (m, input, output) in [
            ("self_attn.q_proj", 32, 32),
            ("self_attn.v_proj", 32, 16),
            ("mlp.down_proj", 64, 32),
        ] {
            want.insert(format!("{p}.{m}.lora_A.weight"), vec![4, input]);
            want.insert(format!("{p}.{m}.lora_B.weight"), vec![output, 4]);
        }
    }
    assert_eq!(shapes, want);

    // `adapter = DIR` alone: the base model with the adapter on.
    let want_lp = tch::no_grad(|| logprobs(&policy));
    let want_logits = logits(&policy);
    let reloaded = lora::build(
        &fixture("tiny-llama"),
        DType::F32,
        device(),
        None,
        Some(&adapter),
        7,
    )
    .unwrap();
    assert!(
        bit_equal(&logits(&reloaded), &want_logits),
        "reloaded logits"
    );
    assert!(bit_equal(&tch::no_grad(|| logprobs(&reloaded)), &want_lp));
    // Through the plugin's spec, as a manifest would build it.
    let spec = HfSpec::new(HfModelConfig {
        path: align_core::manifest::InputPath::new(fixture("tiny-llama")),
        dtype: DType::F32,
        lora: None,
        adapter: Some(align_core::manifest::InputPath::new(&adapter)),
        gradient_checkpointing: false,
    });
    let ctx = ModelContext {
        device: device(),
        vocab_size: None,
        max_len: None,
        seed: 1,
    };
    let built = spec.build(&ctx).unwrap();
    assert!(bit_equal(
        &tch::no_grad(|| logprobs(built.as_ref())),
        &want_lp
    ));
    // With `lora` too: the adapter is the policy's starting point (the
    // prior is base + adapter, and its copies train the adapter further).
    let cont = lora::build(
        &fixture("tiny-llama"),
        DType::F32,
        device(),
        Some(&cfg),
        Some(&adapter),
        7,
    )
    .unwrap();
    let copy = cont.copy().unwrap();
    assert_eq!(copy.var_store().variables().len(), 12);
    assert!(bit_equal(&tch::no_grad(|| logprobs(&copy)), &want_lp));
    let other = config(2, &cfg.targets);
    let err = lora::build(
        &fixture("tiny-llama"),
        DType::F32,
        device(),
        Some(&other),
        Some(&adapter),
        7,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("r = 4") && err.contains("rank = 2"), "{err}");
}

#[test]
fn merged_weights_give_the_adapted_model() {
    let mut cfg = config(4, &[Target::QProj, Target::OProj, Target::GateProj]);
    cfg.merge = true;
    let policy = trained(&cfg);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(policy.export(dir.path()).unwrap(), ["adapter", "merged"]);
    let merged = load(&dir.path().join("merged"), DType::F32, device()).unwrap();
    assert!(merged.tokenizer.is_some(), "the base's tokenizer is copied");
    let (got, want) = (logits(merged.policy.as_ref()), logits(&policy));
    let (_, mask, _) = batch();
    let real = mask.ne(0).unsqueeze(-1);
    common::assert_close(&got, &want, &real, 1e-4, 1e-5, "merged logits");
    let base = logits(
        load(&fixture("tiny-llama"), DType::F32, device())
            .unwrap()
            .policy
            .as_ref(),
    );
    let moved = (&want - &base).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the adapters changed the logits ({moved})");
    // Only the targeted weights differ from the base's.
    let base_w = Tensor::read_safetensors(fixture("tiny-llama").join("model.safetensors")).unwrap();
    let merged_w: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("merged/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (name, w) in base_w {
        let same = merged_w[&name].equal(&w);
        let targeted = ["q_proj", "o_proj", "gate_proj"]
            .iter()
            .any(|t| name.contains(t));
        assert_eq!(!same, targeted, "{name}");
    }
}

/// Writes `adapter` into a fresh directory with `edit` applied to its config
/// and `tensors` edited; returns what loading it onto the tiny Llama says.
fn load_error(
    adapter: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let mut t = Tensor::read_safetensors(adapter.join("adapter_model.safetensors")).unwrap();
    tensors(&mut t);
    Tensor::write_safetensors(&t, dir.path().join("adapter_model.safetensors")).unwrap();
    match lora::build(
        &fixture("tiny-llama"),
        DType::F32,
        device(),
        None,
        Some(dir.path()),
        7,
    ) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_adapters_are_refused_naming_the_fault() {
    let policy = trained(&config(2, &[Target::QProj, Target::VProj]));
    let dir = tempfile::tempdir().unwrap();
    policy.save_adapter(dir.path()).unwrap();
    let a = dir.path();
    assert_eq!(load_error(a, |_| {}, |_| {}), "loaded");
    let cases: Vec<(&str, String)> = vec![
        (
            "use_dora",
            load_error(a, |c| c["use_dora"] = true.into(), |_| {}),
        ),
        (
            "modules_to_save",
            load_error(
                a,
                |c| c["modules_to_save"] = serde_json::json!(["lm_head"]),
                |_| {},
            ),
        ),
        (
            "peft_type is `IA3`",
            load_error(a, |c| c["peft_type"] = "IA3".into(), |_| {}),
        ),
        (
            "`embed_tokens` is not one of",
            load_error(
                a,
                |c| c["target_modules"] = serde_json::json!(["q_proj", "embed_tokens"]),
                |_| {},
            ),
        ),
        (
            "this model needs [3, 32]",
            load_error(a, |c| c["r"] = 3.into(), |_| {}),
        ),
        (
            "no tensor `base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight`",
            load_error(
                a,
                |_| {},
                |t| t.retain(|(n, _)| !n.contains("layers.1.self_attn.v_proj.lora_B")),
            ),
        ),
        (
            "holds a NaN",
            load_error(
                a,
                |_| {},
                |t| {
                    let _ = t[0].1.get(0).get(0).fill_(f64::NAN);
                },
            ),
        ),
        (
            "`base_model.model.lm_head.lora_A.weight` is not the LoRA weight",
            load_error(
                a,
                |_| {},
                |t| {
                    t.push((
                        "base_model.model.lm_head.lora_A.weight".into(),
                        Tensor::zeros([2, 32], (Kind::Float, tch::Device::Cpu)),
                    ))
                },
            ),
        ),
        (
            "has shape [2, 16]",
            load_error(
                a,
                |_| {},
                |t| {
                    let i = t
                        .iter()
                        .position(|(n, _)| n.ends_with("layers.0.self_attn.q_proj.lora_A.weight"))
                        .unwrap();
                    t[i].1 = Tensor::zeros([2, 16], (Kind::Float, tch::Device::Cpu));
                },
            ),
        ),
    ];
    for (want, got) in cases {
        assert!(got.contains(want), "want `{want}` in: {got}");
    }
    // Only Llama has adapters here.
    let err = lora::build(
        &fixture("tiny-gpt2"),
        DType::F32,
        device(),
        Some(&config(2, &[Target::QProj])),
        None,
        7,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("implemented for Llama"), "{err}");
}

#[test]
fn lora_settings_are_checked() {
    let parse = |s: &str| serde_json::from_str::<LoraConfig>(s).map_err(|e| e.to_string());
    let err = parse(r#"{"targets": ["q_proj", "lm_head"]}"#).unwrap_err();
    assert!(
        err.contains("lm_head") && err.contains("q_proj") && err.contains("down_proj"),
        "{err}"
    );
    let check = |s: &str| parse(s).unwrap().check().unwrap_err();
    assert_eq!(check(r#"{"rank": 0}"#).0, "rank");
    assert_eq!(check(r#"{"alpha": -1.0}"#).0, "alpha");
    assert_eq!(check(r#"{"dropout": 1.0}"#).0, "dropout");
    assert_eq!(check(r#"{"targets": []}"#).0, "targets");
    assert_eq!(check(r#"{"targets": ["q_proj", "q_proj"]}"#).0, "targets");
    let ok = r#"{"rank": 4, "alpha": 8.0, "dropout": 0.05, "targets": ["o_proj"], "merge": true}"#;
    assert!(parse(ok).unwrap().check().is_ok());
    assert!(parse(r#"{"rnak": 4}"#).unwrap_err().contains("rnak"));
}

/// PEFT itself loads the saved adapter onto the base model (transformers'
/// Llama) and gives the logits this crate computes for the adapted model.
#[test]
fn peft_loads_the_saved_adapter_to_the_same_logits() {
    // Set-up does not install peft:
    // `~/.cache/brain-rs/torch-2.11.0/bin/python -m pip install peft`.
    let Some(python) = common::torch_python("peft, transformers") else {
        eprintln!(
            "SKIPPED peft_loads_the_saved_adapter_to_the_same_logits: no `peft` in the PyTorch \
             environment (`~/.cache/brain-rs/torch-2.11.0/bin/python -m pip install peft`)"
        );
        return;
    };
    let mut cfg = config(4, &Target::ALL);
    cfg.alpha = 6.0; // scaling 1.5, so a wrong scaling shows
    let policy = trained(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    policy.save_adapter(&adapter).unwrap();
    let e = expected("tiny-llama");
    let ours = dir.path().join("ours.safetensors");
    let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu);
    Tensor::write_safetensors(
        &[
            ("input_ids", cpu(&e["input_ids"])),
            ("attention_mask", cpu(&e["attention_mask"])),
            ("position_ids", cpu(&e["position_ids"])),
            ("logits", cpu(&logits(&policy))),
        ],
        &ours,
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peft/check_adapter.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(fixture("tiny-llama"))
        .arg(&adapter)
        .arg(&ours)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("PEFT check: {stdout}");
    assert!(
        out.status.success(),
        "PEFT disagrees: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"peft_modules\": 14"), "{stdout}");
}

/// A GGUF base (SmolLM2 ships as one): adapters on the imported Llama, and
/// a merged export that carries the tokenizer rebuilt from its metadata.
#[test]
fn gguf_base_models_take_adapters_and_merge_with_their_tokenizer() {
    let gguf = fixture("tiny-llama-gguf").join("tiny-llama.gguf");
    let plain = load(&gguf, DType::F32, device()).unwrap();
    let mut cfg = config(2, &[Target::KProj, Target::DownProj]);
    cfg.merge = true;
    let prior = lora::build(&gguf, DType::F32, device(), Some(&cfg), None, 3).unwrap();
    let mut policy = prior.copy().unwrap();
    let e = expected("tiny-llama-gguf");
    let (ids, mask) = (&e["input_ids"], &e["attention_mask"]);
    let fwd = |p: &dyn Policy| tch::no_grad(|| p.forward(ids, mask));
    assert!(bit_equal(&fwd(&policy), &fwd(plain.policy.as_ref())));
    train(&mut policy, 2);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(policy.export(dir.path()).unwrap(), ["adapter", "merged"]);
    let merged = load(&dir.path().join("merged"), DType::F32, device()).unwrap();
    let tok = merged
        .tokenizer
        .expect("tokenizer.json from the GGUF metadata");
    let ours = plain.tokenizer.unwrap();
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        ours.encode("hello world", false).unwrap()
    );
    let real = mask.ne(0).unsqueeze(-1);
    common::assert_close(
        &fwd(merged.policy.as_ref()),
        &fwd(&policy),
        &real,
        1e-4,
        1e-5,
        "merged GGUF logits",
    );
}
