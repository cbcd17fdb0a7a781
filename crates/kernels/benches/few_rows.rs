//! `linear_few_rows` on SmolLM2-135M's decoding shapes (16 rows), with the
//! effective weight bandwidth it reaches.
//!
//!     cargo bench -p align-kernels
//!
//! The side-by-side against LibTorch's GEMM is `cargo bench -p align-models
//! --bench linear` (it needs LibTorch).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let rows = 16;
    let mut group = c.benchmark_group("linear_few_rows/16");
    for (n, k) in [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ] {
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
        let mut y = vec![0f32; rows * n];
        group.throughput(Throughput::Bytes((n * k * 4) as u64));
        group.bench_function(format!("{n}x{k}"), |b| {
            b.iter(|| align_kernels::linear_few_rows(&x, rows, k, &w, n, None, &mut y))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
