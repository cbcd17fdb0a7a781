//! The CPU decoding kernel (`align-kernels`, feature `cpu-decode-kernel`)
//! and LibTorch's GEMM sum in different orders; both routes of
//! `common::linear` must still sample the same tokens from the tiny
//! fixtures, with the same log-probs. With bf16 weights the kernel reads
//! them as stored: the draws must match LibTorch computing with the same
//! weights widened to f32, and the recorded log-probs must be exactly those
//! of the logits that drew each token. The route switch is process-wide, so
//! the tests take turns (`ROUTE`).

mod common;

use align_core::sampling::{sample, SampleBatch};
use align_core::task::Prompt;
use align_core::{Policy, SamplingConfig};
use std::sync::Mutex;

use align_models::common::{
    decode_kernel_available, decode_kernel_bf16_calls, decode_kernel_calls, set_decode_kernel,
    FEW_ROWS,
};
use align_models::{load, DType};
use common::fixture;
use tch::{Device, Kind, Tensor};

/// Per-token log-probs may differ by this much between the routes.
const ATOL: f64 = 1e-4;
const PER_PROMPT: i64 = 4;
const NEW_TOKENS: i64 = 12;

/// Held by each test while it flips the process-wide route switch.
static ROUTE: Mutex<()> = Mutex::new(());

fn route_lock() -> std::sync::MutexGuard<'static, ()> {
    ROUTE.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// Three prompts of ragged lengths, and the longest length.
fn test_prompts() -> (Vec<Prompt>, i64) {
    let prompts: Vec<Prompt> = [vec![5i64, 17, 42], vec![7, 99, 3, 250, 11], vec![1]]
        .into_iter()
        .map(|ids| Prompt { ids, text: None })
        .collect();
    let tp = prompts.iter().map(|p| p.ids.len()).max().unwrap() as i64;
    assert!(
        prompts.len() as i64 * PER_PROMPT <= FEW_ROWS,
        "decoding steps take the kernel"
    );
    (prompts, tp)
}

/// Plain sampling, filtered sampling with a temperature, greedy decoding.
fn test_configs() -> [SamplingConfig; 3] {
    [
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
    ]
}

#[test]
fn decode_kernel_and_libtorch_sample_alike() {
    let _route = route_lock();
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

    let (prompts, tp) = test_prompts();
    let configs = test_configs();
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

/// The sums `sample` records, recomputed from the logits the same decoder
/// gives when fed the sampled tokens (a prefill, then one step per token,
/// as `sample` calls it) with the sampler's own operations in its order:
/// `(model_logp, proposal_logp)` `[B]`.
fn replayed_sums(
    policy: &dyn Policy,
    batch: &SampleBatch,
    tp: i64,
    config: &SamplingConfig,
) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let mut decoder = policy.decoder().expect("HF models decode with a KV cache");
    let (ids, mask) = (&batch.input_ids, &batch.attention_mask);
    let b = ids.size()[0];
    let mut model = Tensor::zeros([b], (Kind::Float, Device::Cpu));
    let mut proposal = Tensor::zeros([b], (Kind::Float, Device::Cpu));
    let mut logits = decoder.prefill(&ids.narrow(1, 0, tp), &mask.narrow(1, 0, tp));
    for j in 0..NEW_TOKENS {
        let token = ids.select(1, tp + j).unsqueeze(1); // [B, 1]
        let raw = logits.log_softmax(-1, Kind::Float);
        model += raw.gather(1, &token, false).squeeze_dim(1);
        if config.temperature != 0.0 {
            let logq = if config.is_plain() {
                raw
            } else {
                config.sampling_logprobs(&logits)
            };
            proposal += logq.gather(1, &token, false).squeeze_dim(1);
        }
        if j + 1 < NEW_TOKENS {
            logits = decoder.step(&token.squeeze_dim(1), &mask.narrow(1, 0, tp + j + 1));
        }
    }
    (model, proposal)
}

/// Per-token log-probs of a bf16 model within this of an f32 model holding
/// the same (widened) weights: the bf16 model also rounds its activations
/// to bf16 (8 bits of mantissa) at every operator. Measured on the
/// fixtures: at most 0.03.
const BF16_ACTIVATIONS_ATOL: f64 = 0.05;

/// A model loaded in bf16 decodes through the bf16 kernel (its weights read
/// as stored, widened to f32 in registers, f32 products and sums, results
/// rounded to bf16 as LibTorch's bf16 GEMM rounds its f32 sums):
///
/// - the log-densities `sample` records are exactly (bit for bit) those of
///   the logits that drew each token, recomputed through the same decoder;
/// - it draws the same tokens as LibTorch's own bf16 products (which also
///   widen the weights to f32 and sum in f32), per-token log-probs within
///   [`ATOL`] (summation order);
/// - on the tokens it drew, its per-token log-probs are within
///   [`BF16_ACTIVATIONS_ATOL`] of LibTorch computing everything in f32 with
///   the same weights widened (the cost of bf16 activations; draws from the
///   two are not the same tokens, as a draw moves with its probabilities).
#[test]
fn bf16_weights_decode_through_the_kernel() {
    let _route = route_lock();
    if !decode_kernel_available() {
        eprintln!("SKIPPED: no decoding kernel here (feature off, or no AVX2/FMA)");
        return;
    }
    let (prompts, tp) = test_prompts();
    let (mut compared, mut worst_torch, mut worst_wide) = (0, 0f64, 0f64);
    for name in [
        "tiny-llama",
        "tiny-llama-tied",
        "tiny-gpt-neox",
        "tiny-gpt2",
    ] {
        let half = load(&fixture(name), DType::Bf16, Device::Cpu).expect("fixture loads");
        let wide = load(&fixture(name), DType::F32, Device::Cpu).expect("fixture loads");
        tch::no_grad(|| {
            for (_, mut v) in wide.policy.var_store().variables() {
                let rounded = v.to_kind(Kind::BFloat16).to_kind(Kind::Float);
                v.copy_(&rounded);
            }
        });
        for (c, config) in test_configs().iter().enumerate() {
            for seed in [0u64, 1] {
                let what = format!("{name}, config {c}, seed {seed}");
                let draw = |lm: &align_models::LanguageModel, kernel: bool| {
                    set_decode_kernel(kernel);
                    let batch = sample(
                        lm.policy.as_ref(),
                        &prompts,
                        PER_PROMPT,
                        NEW_TOKENS,
                        None,
                        config,
                        seed,
                    );
                    set_decode_kernel(true);
                    batch
                };
                let before = decode_kernel_bf16_calls();
                let batch = draw(&half, true);
                let calls = decode_kernel_bf16_calls() - before;
                // At least the output projection of every step.
                assert!(
                    calls >= NEW_TOKENS as usize,
                    "{what}: {calls} bf16 products"
                );
                let (model, proposal) = replayed_sums(half.policy.as_ref(), &batch, tp, config);
                assert!(model.equal(&batch.model_logp), "{what}: model log-probs");
                assert!(
                    proposal.equal(&batch.proposal_logp),
                    "{what}: proposal log-probs"
                );
                let half_lp = decoded_token_logprobs(half.policy.as_ref(), &batch, tp);

                let before = decode_kernel_calls();
                let torch = draw(&half, false);
                set_decode_kernel(false);
                let torch_lp = decoded_token_logprobs(half.policy.as_ref(), &batch, tp);
                let wide_lp = decoded_token_logprobs(wide.policy.as_ref(), &batch, tp);
                set_decode_kernel(true);
                assert_eq!(
                    decode_kernel_calls(),
                    before,
                    "{what}: the kernel ran while off"
                );
                assert!(
                    batch.input_ids.equal(&torch.input_ids),
                    "{what}: the kernel and LibTorch's bf16 products sampled different tokens"
                );
                let gap = max_abs_diff(&half_lp, &torch_lp);
                assert!(gap <= ATOL, "{what}: per-token log-probs differ by {gap}");
                worst_torch = worst_torch.max(gap);
                let gap = max_abs_diff(&half_lp, &wide_lp);
                assert!(
                    gap <= BF16_ACTIVATIONS_ATOL,
                    "{what}: per-token log-probs differ from f32's by {gap}"
                );
                worst_wide = worst_wide.max(gap);
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 4 * 3 * 2);
    eprintln!(
        "{compared} bf16 runs: recorded log-probs exact; same tokens as LibTorch's bf16 products, \
         per-token log-probs within {worst_torch:e}; within {worst_wide:e} of f32 activations"
    );
}
