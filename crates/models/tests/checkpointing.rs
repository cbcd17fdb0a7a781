//! Gradient checkpointing on the tiny Llama fixture: the loss's backward
//! stops at the last layer's output (the layers' weights have no gradient
//! yet), `finish_backward` recomputes the layers and gives every weight the
//! gradient of the plain backward pass; with two forwards in one loss (as
//! DPO's chosen and rejected rows), with a forward the loss never reads, and
//! with LoRA adapters that drop out (the recomputation draws the same masks).

mod common;

use std::collections::BTreeMap;

use align_core::Policy;
use align_models::lora::{self, LoraConfig, Target};
use align_models::{load, DType};
use common::{device, expected, fixture};
use tch::{Kind, Tensor};

/// The fixture's batch (a left- and a right-padded row).
fn batch() -> (Tensor, Tensor, Tensor) {
    let e = expected("tiny-llama");
    (
        e["input_ids"].shallow_clone(),
        e["attention_mask"].shallow_clone(),
        e["completion_mask"].shallow_clone(),
    )
}

/// The trained policy as the runner makes it: a copy of the prior (built
/// with the manifest's setting, which the copy keeps), unfrozen.
fn full(checkpointing: bool) -> Box<dyn Policy> {
    let mut prior = load(&fixture("tiny-llama"), DType::F32, device())
        .unwrap()
        .policy;
    assert!(prior.set_gradient_checkpointing(checkpointing));
    let mut p = prior.frozen_clone().expect("an in-memory copy").unwrap();
    p.var_store_mut().unfreeze();
    p
}

fn with_lora(checkpointing: bool, dropout: f64) -> Box<dyn Policy> {
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: vec![Target::QProj, Target::VProj, Target::DownProj],
        merge: false,
    };
    let mut prior = lora::build(
        &fixture("tiny-llama"),
        DType::F32,
        device(),
        Some(&cfg),
        None,
        7,
    )
    .unwrap();
    assert!(prior.set_gradient_checkpointing(checkpointing));
    // The trained policy is a copy of the prior with fresh adapters.
    let mut p = prior.copy().unwrap();
    p.var_store_mut().unfreeze();
    // lora_B starts at zero, where lora_A's gradient is zero too: move it.
    tch::no_grad(|| {
        for (name, t) in p.var_store().variables() {
            if name.contains("lora_B") {
                let _ = t.shallow_clone().fill_(0.05);
            }
        }
    });
    Box::new(p)
}

/// A loss over one or more forwards of the batch, each row weighted
/// differently in each forward.
fn loss(p: &dyn Policy, forwards: &[f64]) -> Tensor {
    let (ids, mask, comp) = batch();
    let terms: Vec<Tensor> = forwards
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let logp = p.sequence_logprobs(&ids, &mask, &comp); // [B]
            let weights: Vec<f32> = (0..logp.size()[0])
                .map(|r| (*w + 0.37 * (r * (i as i64 + 1)) as f64) as f32)
                .collect();
            let weights = Tensor::from_slice(&weights).to_device(device()); // [B]
            (logp * weights).sum(Kind::Float)
        })
        .collect();
    Tensor::stack(&terms, 0).sum(Kind::Float)
}

/// Every trainable variable's gradient by name (zeros where undefined).
fn grads(p: &dyn Policy) -> BTreeMap<String, Tensor> {
    p.var_store()
        .trainable_variables()
        .into_iter()
        .zip(names(p))
        .map(|(t, n)| {
            let g = t.grad();
            let g = if g.defined() {
                g.copy()
            } else {
                t.zeros_like()
            };
            (n, g)
        })
        .collect()
}

/// Trainable variables' names, in `trainable_variables` order.
fn names(p: &dyn Policy) -> Vec<String> {
    let vars = p.var_store().variables();
    p.var_store()
        .trainable_variables()
        .iter()
        .map(|t| {
            vars.iter()
                .find(|(_, v)| v.data_ptr() == t.data_ptr())
                .map(|(n, _)| n.clone())
                .expect("a trainable variable has a name")
        })
        .collect()
}

/// The largest difference of two gradient maps over the largest gradient.
fn relative_gap(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (mut gap, mut scale) = (0f64, 0f64);
    for (n, x) in a {
        let y = &b[n];
        gap = gap.max((x - y).abs().max().double_value(&[]));
        scale = scale.max(x.abs().max().double_value(&[]));
    }
    assert!(scale > 0.0, "the gradients are all zero");
    gap / scale
}

fn backward(p: &dyn Policy, forwards: &[f64]) -> BTreeMap<String, Tensor> {
    for t in p.var_store().trainable_variables() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    loss(p, forwards).backward();
    p.finish_backward();
    grads(p)
}

#[test]
fn the_loss_backward_stops_at_the_layers_and_finish_backward_completes_it() {
    let plain = full(false);
    let ckpt = full(true);
    let want = backward(plain.as_ref(), &[0.3]);

    loss(ckpt.as_ref(), &[0.3]).backward();
    let partial = grads(ckpt.as_ref());
    let layer_grad = |g: &BTreeMap<String, Tensor>| {
        g.iter()
            .filter(|(n, _)| n.contains("layers."))
            .map(|(_, t)| t.abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    };
    assert_eq!(layer_grad(&partial), 0.0, "layers were kept in the graph");
    assert!(layer_grad(&want) > 0.0);
    ckpt.finish_backward();
    let got = grads(ckpt.as_ref());
    let gap = relative_gap(&want, &got);
    assert!(gap <= 1e-6, "checkpointed gradients differ by {gap:e}");
}

#[test]
fn two_forwards_in_one_loss_and_repeated_steps() {
    let plain = full(false);
    let ckpt = full(true);
    for _ in 0..2 {
        let want = backward(plain.as_ref(), &[0.3, -0.7]);
        let got = backward(ckpt.as_ref(), &[0.3, -0.7]);
        let gap = relative_gap(&want, &got);
        assert!(gap <= 1e-6, "checkpointed gradients differ by {gap:e}");
    }
}

#[test]
fn a_forward_the_loss_never_reads_is_dropped() {
    let plain = full(false);
    let ckpt = full(true);
    let (ids, mask, comp) = batch();
    let _unused = ckpt.sequence_logprobs(&ids, &mask, &comp);
    let want = backward(plain.as_ref(), &[0.5]);
    let got = backward(ckpt.as_ref(), &[0.5]);
    assert!(relative_gap(&want, &got) <= 1e-6);
    // Nothing left pending: another call adds nothing.
    ckpt.finish_backward();
    assert!(relative_gap(&got, &grads(ckpt.as_ref())) == 0.0);
}

/// Outside autograd the checkpointed model is the plain one: the same
/// log-probs, no graph.
#[test]
fn no_grad_forwards_match_the_plain_model() {
    let ckpt = full(true);
    let (ids, mask, comp) = batch();
    let a = tch::no_grad(|| ckpt.sequence_logprobs(&ids, &mask, &comp));
    let plain = full(false);
    let b = tch::no_grad(|| plain.sequence_logprobs(&ids, &mask, &comp));
    assert!(a.allclose(&b, 1e-6, 1e-6, false));
    assert!(!a.requires_grad());
}

#[test]
fn lora_adapters_with_dropout_recompute_the_same_masks() {
    for dropout in [0.0, 0.3] {
        let plain = with_lora(false, dropout);
        let ckpt = with_lora(true, dropout);
        let want = backward(plain.as_ref(), &[0.3, -0.7]);
        let got = backward(ckpt.as_ref(), &[0.3, -0.7]);
        assert!(
            want.keys().all(|n| n.contains("lora_")),
            "{:?}",
            want.keys()
        );
        let gap = relative_gap(&want, &got);
        assert!(
            gap <= 1e-6,
            "dropout {dropout}: checkpointed gradients differ by {gap:e}"
        );
    }
}
