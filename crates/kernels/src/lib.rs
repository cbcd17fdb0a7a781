//! CPU kernels for decoding that LibTorch's BLAS does poorly.
//!
//! A decoding step multiplies a few activation rows (one per sequence) by
//! every weight matrix. GEMMs built for large matrices pack their operands
//! first; MKL repacks the whole weight matrix on every such call, so a step
//! read each weight about twice and spent a third of its time copying
//! (`perf` on SmolLM2 sampling: `mkl_blas_def_sgemm_scopy_right4_bdz`, 33%).
//! [`linear_few_rows`] reads each weight row once, straight from its
//! `[out, in]` layout, and dots it with every activation row held in cache.

mod dot;

use rayon::prelude::*;

/// Weight rows per parallel task: enough work to amortise the hand-off,
/// enough tasks to balance two to sixteen threads on 576-wide layers.
const ROWS_PER_TASK: usize = 96;

/// Whether [`linear_few_rows`] runs its SIMD kernel on this CPU (x86-64 with
/// AVX2 and FMA); elsewhere it falls back to plain loops, slower than BLAS.
pub fn simd_available() -> bool {
    dot::simd_available()
}

/// `y = x · Wᵀ + b`: `x` `[rows, k]`, `w` `[n, k]`, `bias` `[n]`, `y` `[rows, n]`,
/// all row-major f32. Meant for few rows (≤ 32); splits the `n` weight rows
/// over the current rayon pool.
///
/// # Panics
/// When a slice's length does not match the shapes.
pub fn linear_few_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let rayon = |tasks: usize, task: &(dyn Fn(usize) + Sync)| {
        (0..tasks).into_par_iter().for_each(task);
    };
    // SAFETY: rayon runs every task index exactly once.
    unsafe { linear_few_rows_with(x, rows, k, w, n, bias, y, rayon) }
}

/// [`linear_few_rows`] on a caller's threads: `parallel(tasks, task)` must
/// call `task(i)` for every `i < tasks`, on any threads, concurrently or not.
///
/// # Safety
/// `parallel` calls `task` only with indices below `tasks`, each at most
/// once (two calls of one index would write the same outputs concurrently).
///
/// # Panics
/// As [`linear_few_rows`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear_few_rows_with(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    parallel: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
) {
    // Checked products: a wrapped one could pass for a slice's length, and
    // the SIMD path reads through raw pointers.
    assert_eq!(rows.checked_mul(k), Some(x.len()), "x is [rows, k]");
    assert_eq!(n.checked_mul(k), Some(w.len()), "w is [n, k]");
    assert_eq!(rows.checked_mul(n), Some(y.len()), "y is [rows, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is [n]");
    }
    if rows == 0 || n == 0 {
        return;
    }
    let out = OutPtr(y.as_mut_ptr());
    let task = move |task: usize| {
        let first = task * ROWS_PER_TASK;
        let count = ROWS_PER_TASK.min(n - first);
        let weights = &w[first * k..(first + count) * k];
        let bias = bias.map(|b| &b[first..first + count]);
        // SAFETY: task `t` writes only columns `first..first + count` of
        // each row of `y`, which no other task touches (each task runs
        // once), and `y` outlives `parallel`.
        unsafe { dot::block(x, rows, k, weights, count, bias, out.at(first), n) };
    };
    parallel(n.div_ceil(ROWS_PER_TASK), &task);
}

/// `y`'s base pointer, shared by the tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, column: usize) -> *mut f32 {
        // In bounds: `column < n` and `y` has `rows · n ≥ n` elements.
        unsafe { self.0.add(column) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        n: usize,
        b: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                y[i * n + j] = dot + b.map_or(0.0, |b| b[j] as f64);
            }
        }
        y
    }

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every tile shape and tail (rows 1–9, k not a multiple of 8, n spanning
    /// several tasks with a ragged last one), with and without bias.
    #[test]
    fn matches_f64_reference_on_ragged_shapes() {
        for rows in [1, 2, 3, 4, 5, 7, 9, 16] {
            for k in [1, 7, 8, 13, 64, 100] {
                for n in [1, 2, 3, 5, 97, 2 * ROWS_PER_TASK + 5] {
                    let x = values(rows * k, 1);
                    let w = values(n * k, 2);
                    let b = values(n, 3);
                    for bias in [None, Some(b.as_slice())] {
                        let mut y = vec![f32::NAN; rows * n];
                        linear_few_rows(&x, rows, k, &w, n, bias, &mut y);
                        let want = reference(&x, rows, k, &w, n, bias);
                        for (idx, (got, want)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "rows {rows} k {k} n {n} bias {}: y[{idx}] = {got}, want {want}",
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn portable_path_matches_simd_path() {
        let (rows, k, n) = (5, 37, 11);
        let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
        let mut simd = vec![0f32; rows * n];
        let mut plain = vec![0f32; rows * n];
        unsafe {
            dot::block(&x, rows, k, &w, n, Some(&b), simd.as_mut_ptr(), n);
            dot::block_portable(&x, rows, k, &w, n, Some(&b), plain.as_mut_ptr(), n);
        }
        for (a, b) in simd.iter().zip(&plain) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    #[should_panic(expected = "x is [rows, k]")]
    fn wrapping_shape_products_are_refused() {
        let mut y = vec![0f32; 4];
        linear_few_rows(&[], 2, 1 << (usize::BITS - 1), &[], 2, None, &mut y);
    }

    #[test]
    #[should_panic(expected = "w is [n, k]")]
    fn shape_mismatch_panics() {
        let mut y = vec![0f32; 4];
        linear_few_rows(&[0.0; 6], 2, 3, &[0.0; 5], 2, None, &mut y);
    }
}
