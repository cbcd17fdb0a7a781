//! The memory bound of a decoding step, measured: how fast this machine
//! streams a buffer far larger than its last-level cache, beside how fast
//! the few-rows kernels read weights that large (f32 and bf16, 1 and 16
//! activation rows). Criterion's throughput is the bytes read per second.
//! Threads: `BENCH_THREADS` (default 2), one rayon pool for all.
//!
//!     cargo bench -p align-kernels --bench bandwidth
//!
//! Activation rows: `BENCH_ROWS` (default `1,16`). Buffers: `BENCH_MIB`
//! MiB (default 512) of plain reads; the kernels read
//! a `[n, 576]` matrix of about the same size (SmolLM2-135M's hidden width;
//! its whole f32 step is 538 MB).
use std::hint::black_box;

use align_kernels::{linear_few_rows, linear_few_rows_bf16};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sum of every word, 4 independent lanes so the loads overlap.
fn read_all(words: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    for c in words.chunks_exact(4) {
        for (a, w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*w);
        }
    }
    acc.iter().fold(0, |s, a| s.wrapping_add(*a))
}

fn bench(c: &mut Criterion) {
    let threads = env("BENCH_THREADS", 2);
    let mib = env("BENCH_MIB", 512);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    let bytes = mib << 20;
    let row_counts: Vec<usize> = std::env::var("BENCH_ROWS")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .map(|r| {
            r.trim()
                .parse()
                .expect("BENCH_ROWS: counts separated by commas")
        })
        .collect();
    let words: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let mut group = c.benchmark_group(format!("bandwidth/{mib}MiB/{threads}t"));
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bytes as u64));
    let chunk = words.len().div_ceil(threads * 16);
    group.bench_function("read", |b| {
        b.iter(|| {
            pool.install(|| {
                words
                    .par_chunks(chunk)
                    .map(read_all)
                    .reduce(|| 0, u64::wrapping_add)
            })
        })
    });
    drop(words);

    let k = 576;
    let n = bytes / 4 / k;
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 64.0)
        .collect();
    for &rows in &row_counts {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i % 13) as f32 - 6.0) / 8.0)
            .collect();
        let mut y = vec![0f32; rows * n];
        group.bench_function(format!("linear_few_rows f32 {rows}x{k}·{n}x{k}"), |b| {
            b.iter(|| pool.install(|| linear_few_rows(&x, rows, k, &w, n, None, &mut y)));
            black_box(&y);
        });
    }
    // bf16 weights: the same bytes hold twice the rows.
    let n2 = 2 * n;
    let wh: Vec<u16> = (0..n2 * k)
        .map(|i| ((((i % 97) as f32 - 48.0) / 64.0).to_bits() >> 16) as u16)
        .collect();
    drop(w);
    for &rows in &row_counts {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i % 13) as f32 - 6.0) / 8.0)
            .collect();
        let mut y = vec![0f32; rows * n2];
        group.bench_function(format!("linear_few_rows_bf16 {rows}x{k}·{n2}x{k}"), |b| {
            b.iter(|| pool.install(|| linear_few_rows_bf16(&x, rows, k, &wh, n2, None, &mut y)));
            black_box(&y);
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
