//! CPU kernels for decoding that LibTorch's BLAS does poorly.
//!
//! A decoding step multiplies a few activation rows (one per sequence) by
//! every weight matrix. GEMMs built for large matrices pack their operands
//! first; MKL repacks the whole weight matrix on every such call, so a step
//! read each weight about twice and spent a third of its time copying
//! (`perf` on SmolLM2 sampling: `mkl_blas_def_sgemm_scopy_right4_bdz`, 33%).
//! [`linear_few_rows`] reads each weight row once, straight from its
//! `[out, in]` layout, and dots it with every activation row held in cache.
//!
//! Reading the weights is what bounds such a step, so
//! [`linear_few_rows_bf16`] takes them in bf16 (half the bytes), widens
//! them to f32 in registers and multiplies and sums in f32, like
//! LibTorch's bf16 GEMMs; activations and results are f32 or bf16
//! ([`Element`]), computed in f32 either way.

mod dot;

pub use dot::{bf16_to_f32, f32_to_bf16, Bf16, Element};

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

/// `y = x · Wᵀ + b` as [`linear_few_rows`], with `w` in bf16: `w` holds the
/// bits of `[n, k]` bf16 values (as LibTorch stores `BFloat16`); `x` and
/// `y` are f32 or [`Bf16`], `bias` f32. Each weight and activation is
/// widened to f32 exactly, products and sums are f32, and each result is
/// rounded to `Y` once.
///
/// # Panics
/// When a slice's length does not match the shapes.
pub fn linear_few_rows_bf16<X: Element, Y: Element>(
    x: &[X],
    rows: usize,
    k: usize,
    w: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [Y],
) {
    let rayon = |tasks: usize, task: &(dyn Fn(usize) + Sync)| {
        (0..tasks).into_par_iter().for_each(task);
    };
    // SAFETY: rayon runs every task index exactly once.
    unsafe { linear_few_rows_bf16_with(x, rows, k, w, n, bias, y, rayon) }
}

/// [`linear_few_rows_bf16`] on a caller's threads, as
/// [`linear_few_rows_with`].
///
/// # Safety
/// As [`linear_few_rows_with`].
///
/// # Panics
/// As [`linear_few_rows_bf16`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear_few_rows_bf16_with<X: Element, Y: Element>(
    x: &[X],
    rows: usize,
    k: usize,
    w: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [Y],
    parallel: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
) {
    assert_eq!(rows.checked_mul(k), Some(x.len()), "x is [rows, k]");
    assert_eq!(n.checked_mul(k), Some(w.len()), "w is [n, k]");
    assert_eq!(rows.checked_mul(n), Some(y.len()), "y is [rows, n]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is [n]");
    }
    if rows == 0 || n == 0 {
        return;
    }
    // The activations once in the order the SIMD tiles read them (a few
    // kilobytes per row), shared by every task.
    let xp = dot::pair_layout(x, rows, k);
    let xp = xp.as_slice();
    let out = SharedOut(Y::out(y.as_mut_ptr()));
    let task = move |task: usize| {
        let first = task * ROWS_PER_TASK;
        let count = ROWS_PER_TASK.min(n - first);
        let weights = &w[first * k..(first + count) * k];
        let bias = bias.map(|b| &b[first..first + count]);
        // SAFETY: as in `linear_few_rows_with`: disjoint columns per task.
        unsafe { dot::block_bf16(xp, rows, k, weights, count, bias, out.at(first), n) };
    };
    parallel(n.div_ceil(ROWS_PER_TASK), &task);
}

/// `y`'s base pointer, shared by the tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// [`OutPtr`] for the bf16-weight kernel's results of either kind.
#[derive(Clone, Copy)]
struct SharedOut(dot::Out);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(self, column: usize) -> dot::Out {
        // In bounds: `column < n` and `y` has `rows · n ≥ n` elements.
        self.0.offset(column)
    }
}

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

    fn to_bf16(v: f32) -> u16 {
        f32_to_bf16(v)
    }

    #[test]
    fn bf16_widening_is_exact() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            3.140625,
            1e-30,
            6.5e37,
            f32::INFINITY,
        ] {
            let b = to_bf16(v);
            assert_eq!(bf16_to_f32(b).to_bits(), (b as u32) << 16);
            assert_eq!(to_bf16(bf16_to_f32(b)), b, "{v}");
        }
        assert_eq!(bf16_to_f32(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // tie → even
        assert_eq!(bf16_to_f32(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(bf16_to_f32(to_bf16(1.0 + 1.5 / 256.0)), 1.0 + 1.0 / 128.0);
        assert_eq!(to_bf16(f32::NAN), 0x7FC0);
        assert_eq!(to_bf16(f32::MAX), 0x7F80, "rounds to infinity");
    }

    /// bf16 activations and results: widened exactly on the way in, each
    /// result the f32 one rounded once.
    #[test]
    fn bf16_activations_and_results_round_once() {
        let (rows, k, n) = (5, 40, 2 * ROWS_PER_TASK + 3);
        let x: Vec<Bf16> = values(rows * k, 13)
            .into_iter()
            .map(|v| Bf16(to_bf16(v)))
            .collect();
        let xf: Vec<f32> = x.iter().map(|v| bf16_to_f32(v.0)).collect();
        let bits: Vec<u16> = values(n * k, 14).into_iter().map(to_bf16).collect();
        let b = values(n, 15);
        let mut wide = vec![0f32; rows * n];
        linear_few_rows_bf16(&xf, rows, k, &bits, n, Some(&b), &mut wide);
        let mut from_half = vec![0f32; rows * n];
        linear_few_rows_bf16(&x, rows, k, &bits, n, Some(&b), &mut from_half);
        assert_eq!(from_half, wide, "bf16 x is widened exactly");
        let mut half = vec![Bf16(0); rows * n];
        linear_few_rows_bf16(&x, rows, k, &bits, n, Some(&b), &mut half);
        let rounded: Vec<Bf16> = wide.iter().map(|&v| Bf16(to_bf16(v))).collect();
        assert_eq!(half, rounded);
    }

    /// The bf16 kernel against the f64 product of the same (widened)
    /// weights, on every tile shape and every tail of a 16-weight load
    /// (k = 15, 16, 17, 31, 33, …), n over several ragged tasks.
    #[test]
    fn bf16_matches_f64_reference_on_ragged_shapes() {
        for rows in [1, 2, 3, 4, 5, 7, 9, 16, 32] {
            for k in [1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 576] {
                for n in [1, 2, 3, 5, 97, 2 * ROWS_PER_TASK + 5] {
                    let x = values(rows * k, 7);
                    let bits: Vec<u16> = values(n * k, 8).into_iter().map(to_bf16).collect();
                    let wide: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
                    let b = values(n, 9);
                    for bias in [None, Some(b.as_slice())] {
                        let mut y = vec![f32::NAN; rows * n];
                        linear_few_rows_bf16(&x, rows, k, &bits, n, bias, &mut y);
                        let want = reference(&x, rows, k, &wide, n, bias);
                        for (idx, (got, want)) in y.iter().zip(&want).enumerate() {
                            // f32 sums of ≤ 576 products in [-1, 1].
                            let tol = 1e-6 * (k as f64).sqrt() * (1.0 + want.abs());
                            assert!(
                                (*got as f64 - want).abs() <= tol,
                                "rows {rows} k {k} n {n} bias {}: y[{idx}] = {got}, want {want}",
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    /// Same sums as the f32 kernel fed the widened weights, up to summation
    /// order; and the portable fallback agrees with the SIMD path.
    #[test]
    fn bf16_agrees_with_f32_kernel_and_portable_path() {
        let (rows, k, n) = (6, 45, 13);
        let x = values(rows * k, 10);
        let bits: Vec<u16> = values(n * k, 11).into_iter().map(to_bf16).collect();
        let wide: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
        let b = values(n, 12);
        let mut half = vec![0f32; rows * n];
        let mut full = vec![0f32; rows * n];
        linear_few_rows_bf16(&x, rows, k, &bits, n, Some(&b), &mut half);
        linear_few_rows(&x, rows, k, &wide, n, Some(&b), &mut full);
        let xp = dot::pair_layout(&x, rows, k);
        let mut plain = vec![0f32; rows * n];
        let out = dot::Out::F32(plain.as_mut_ptr());
        unsafe { dot::block_bf16_portable(&xp, rows, k, &bits, n, Some(&b), out, n) };
        for ((h, f), p) in half.iter().zip(&full).zip(&plain) {
            assert!((h - f).abs() <= 1e-5 * (1.0 + f.abs()), "{h} vs f32 {f}");
            assert!(
                (h - p).abs() <= 1e-5 * (1.0 + p.abs()),
                "{h} vs portable {p}"
            );
        }
    }

    #[test]
    fn pair_layout_puts_even_then_odd_in_each_full_group() {
        let x: Vec<f32> = (0..2 * 35).map(|i| i as f32).collect();
        let xp = dot::pair_layout(&x, 2, 35);
        let group: Vec<f32> = (0..8)
            .map(|i| 2.0 * i as f32)
            .chain((0..8).map(|i| 2.0 * i as f32 + 1.0))
            .collect();
        assert_eq!(xp[..16], group[..]);
        assert_eq!(
            xp[16..32],
            group.iter().map(|v| v + 16.0).collect::<Vec<_>>()[..]
        );
        assert_eq!(xp[32..35], [32.0, 33.0, 34.0]);
        assert_eq!(
            xp[35..51],
            group.iter().map(|v| v + 35.0).collect::<Vec<_>>()[..]
        );
    }

    /// The SIMD layouts equal the plain loops', for f32 and bf16 rows and
    /// every tail length.
    #[test]
    fn pair_layout_simd_matches_portable() {
        for k in [1, 15, 16, 17, 33, 100, 576] {
            let x = values(3 * k, 16);
            let h: Vec<Bf16> = x.iter().map(|&v| Bf16(to_bf16(v))).collect();
            assert_eq!(
                dot::pair_layout(&x, 3, k),
                dot::pair_layout_portable(&x, 3, k)
            );
            assert_eq!(
                dot::pair_layout(&h, 3, k),
                dot::pair_layout_portable(&h, 3, k)
            );
        }
    }

    #[test]
    #[should_panic(expected = "w is [n, k]")]
    fn bf16_shape_mismatch_panics() {
        let mut y = vec![0f32; 4];
        linear_few_rows_bf16(&[0.0; 6], 2, 3, &[0; 5], 2, None, &mut y);
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
