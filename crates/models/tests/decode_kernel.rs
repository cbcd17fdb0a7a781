//! The CPU decoding kernel (`align-kernels`, feature `cpu-decode-kernel`)
//! and LibTorch's GEMM sum in different orders; both routes of
//! `common::linear` must still sample the same tokens from the tiny
//! fixtures, with the same log-probs. One test: the route switch is
//! process-wide.

mod common;

use align_core::sampling::{sample, SampleBatch};
use align_core::task::Prompt;
use align_core::{Policy, SamplingConfig};
use align_models::common::{
    decode_kernel_available, decode_kernel_calls, set_decode_kernel, FEW_ROWS,
};
use align_models::{load, DType};
use common::fixture;
use tch::{Device, Kind, Tensor};

/// Per-token log-probs may differ by this much between the routes.
const ATOL: f64 = 1e-4;
const PER_PROMPT: i64 = 4;
const NEW_TOKENS: i64 = 12;

fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The log-prob of each completion token `[B, NEW_TOKENS]`, teacher-forced
/// through the model's KV-cache decoder as `sample` feeds it: a prefill of
/// the prompts, then one few-row step per token.
fn decoded_token_logprobs(policy: &dyn Policy, batch: &SampleBatch, tp: i64) -> Tensor {
    let _guard = tch::no_grad_guard();
    let mut decoder = policy.decoder().expect("HF models decode with a KV cache");
    let (ids, mask) = (&batch.input_ids, &batch.attention_mask);
    let mut logits = decoder.prefill(&ids.narrow(1, 0, tp), &mask.narrow(1, 0, tp));
    let mut steps = Vec::new();
    for j in 0..NEW_TOKENS {
        let token = ids.select(1, tp + j); // [B]
        let lp = logits.log_softmax(-1, Kind::Float);
        steps.push(lp.gather(1, &token.unsqueeze(1), false)); // [B, 1]
        if j + 1 < NEW_TOKENS {
            logits = decoder.step(&token, &mask.narrow(1, 0, tp + j + 1));
        }
    }
    Tensor::cat(&steps, 1)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Samples with each route (same seed), asserting the kernel ran only when
/// enabled; returns (kernel, LibTorch) batches and per-token log-probs.
fn both_routes(
    policy: &dyn Policy,
    prompts: &[Prompt],
    config: &SamplingConfig,
    seed: u64,
    tp: i64,
) -> [(SampleBatch, Tensor); 2] {
    [true, false].map(|enabled| {
        set_decode_kernel(enabled);
        let before = decode_kernel_calls();
        let batch = sample(policy, prompts, PER_PROMPT, NEW_TOKENS, None, config, seed);
        let per_token = decoded_token_logprobs(policy, &batch, tp);
        let calls = decode_kernel_calls() - before;
        if enabled {
            // One per layer's projections per step at least.
            assert!(
                calls >= NEW_TOKENS as usize,
                "the kernel route ran {calls} products while enabled"
            );
        } else {
            assert_eq!(calls, 0, "the kernel ran while switched off");
        }
        (batch, per_token)
    })
}

#[test]
fn decode_kernel_and_libtorch_sample_alike() {
    if !cfg!(feature = "cpu-decode-kernel") {
        assert!(!decode_kernel_available());
        eprintln!("SKIPPED: built without the `cpu-decode-kernel` feature");
        return;
    }
    if !cpu_has_avx2_fma() {
        assert!(!decode_kernel_available());
        eprintln!("SKIPPED: this CPU lacks AVX2/FMA, so the decoding kernel is off");
        return;
    }
    assert!(
        decode_kernel_available(),
        "this CPU has AVX2 and FMA, yet the decoding kernel is unavailable"
    );

    let prompts: Vec<Prompt> = [vec![5i64, 17, 42], vec![7, 99, 3, 250, 11], vec![1]]
        .into_iter()
        .map(|ids| Prompt { ids, text: None })
        .collect();
    let tp = prompts.iter().map(|p| p.ids.len()).max().unwrap() as i64;
    assert!(
        prompts.len() as i64 * PER_PROMPT <= FEW_ROWS,
        "decoding steps take the kernel"
    );
    let configs = [
        SamplingConfig::default(),
        SamplingConfig {
            temperature: 0.7,
            top_k: Some(40),
            top_p: Some(0.9),
        },
        SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        },
    ];
    let (mut compared, mut worst) = (0, 0f64);
    for name in [
        "tiny-llama",
        "tiny-llama-tied",
        "tiny-gpt-neox",
        "tiny-gpt2",
    ] {
        let lm = load(&fixture(name), DType::F32, Device::Cpu).expect("fixture loads");
        for (c, config) in configs.iter().enumerate() {
            for seed in [0u64, 1] {
                let what = format!("{name}, config {c}, seed {seed}");
                let [(kernel, kernel_lp), (torch, torch_lp)] =
                    both_routes(lm.policy.as_ref(), &prompts, config, seed, tp);
                assert!(
                    kernel.input_ids.equal(&torch.input_ids),
                    "{what}: the routes sampled different tokens"
                );
                assert!(kernel.attention_mask.equal(&torch.attention_mask), "{what}");
                let per_token = max_abs_diff(&kernel_lp, &torch_lp);
                assert!(
                    per_token <= ATOL,
                    "{what}: per-token log-probs differ by {per_token}"
                );
                worst = worst.max(per_token);
                // The teacher-forced decode reproduces the sampler's own sums.
                let sums = kernel_lp.sum_dim_intlist([1].as_slice(), false, Kind::Float);
                let recorded = max_abs_diff(&sums, &kernel.model_logp);
                assert!(
                    recorded <= ATOL,
                    "{what}: rescored sums differ by {recorded}"
                );
                for (a, b, which) in [
                    (&kernel.model_logp, &torch.model_logp, "model"),
                    (&kernel.proposal_logp, &torch.proposal_logp, "proposal"),
                ] {
                    let gap = max_abs_diff(a, b);
                    let bound = ATOL * NEW_TOKENS as f64;
                    assert!(gap <= bound, "{what}: {which} log-probs differ by {gap}");
                }
                compared += 1;
            }
        }
    }
    set_decode_kernel(true);
    assert_eq!(compared, 4 * 3 * 2);
    eprintln!(
        "{compared} runs: same tokens; per-token log-probs within {worst:e}; {} kernel products",
        decode_kernel_calls()
    );
}
