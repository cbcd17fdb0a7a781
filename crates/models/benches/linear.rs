//! `x · Wᵀ` for one decoding step of SmolLM2-135M (16 rows, CPU), side by
//! side: LibTorch's `linear` (MKL) against `common::linear`, which routes
//! these shapes to `align_kernels` on LibTorch's OpenMP team; with f32
//! weights, and with bf16 weights (LibTorch's bf16 `linear` against ours,
//! for f32 and for bf16 activations). Each group's throughput is the bytes
//! of the weight matrix it reads. Threads: `BENCH_THREADS` (default 2).
//!
//!     cargo bench -p align-models --bench linear
use align_models::common::linear;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tch::{Device, Kind, Tensor};

fn bench(c: &mut Criterion) {
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    let rows = 16;
    // q/o, k/v, gate/up, down, and the tied output projection.
    for (n, k) in [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ] {
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu));
        let mut group = c.benchmark_group(format!("linear/{rows}x{k}·{n}x{k}ᵀ/{threads}t"));
        group.throughput(Throughput::Bytes((n * k * 4) as u64));
        group.bench_function("libtorch", |b| b.iter(|| x.linear(&w, None::<&Tensor>)));
        group.bench_function("brain-rs", |b| b.iter(|| linear(&x, &w, None)));
        group.finish();

        let (wh, xh) = (w.to_kind(Kind::BFloat16), x.to_kind(Kind::BFloat16));
        let mut group = c.benchmark_group(format!("linear-bf16/{rows}x{k}·{n}x{k}ᵀ/{threads}t"));
        group.throughput(Throughput::Bytes((n * k * 2) as u64));
        group.bench_function("libtorch bf16", |b| {
            b.iter(|| xh.linear(&wh, None::<&Tensor>))
        });
        group.bench_function("brain-rs bf16 W, f32 x", |b| {
            b.iter(|| linear(&x, &wh, None))
        });
        group.bench_function("brain-rs bf16 W, bf16 x", |b| {
            b.iter(|| linear(&xh, &wh, None))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
