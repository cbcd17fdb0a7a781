//! The inner kernel: a block of weight rows dotted with every activation
//! row, `R × C` outputs at a time (`R` activation rows, `C` weight rows) so
//! each loaded weight vector feeds `R` fused multiply-adds.

/// Activation rows per tile.
const R: usize = 4;
/// Weight rows per tile. `R · C` = 12 accumulators + 3 weight vectors + 1
/// activation vector = the 16 AVX2 registers.
const C: usize = 3;

pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y[i·ldy + j] = x[i] · w[j] + bias[j]` for `i < rows`, `j < count`:
/// `x` `[rows, k]`, `w` `[count, k]` row-major.
///
/// # Safety
/// `x.len() ≥ rows·k` and `w.len() ≥ count·k` (the SIMD path reads through
/// raw pointers); `y` must be valid for writes at `i·ldy + j` for every such
/// `i`, `j`, and no one else may access those elements meanwhile.
#[allow(clippy::too_many_arguments)] // BLAS-style: operands, shapes, strides
pub unsafe fn block(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    count: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        return avx2::block(x, rows, k, w, count, bias, y, ldy);
    }
    block_portable(x, rows, k, w, count, bias, y, ldy)
}

/// Plain loops: the fallback without AVX2/FMA, and the reference in tests.
///
/// # Safety
/// As [`block`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_portable(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    count: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
) {
    for j in 0..count {
        let wj = &w[j * k..(j + 1) * k];
        let b = bias.map_or(0.0, |b| b[j]);
        for i in 0..rows {
            let xi = &x[i * k..(i + 1) * k];
            let dot: f32 = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
            *y.add(i * ldy + j) = dot + b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{C, R};

    /// # Safety
    /// As [`super::block`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        count: usize,
        bias: Option<&[f32]>,
        y: *mut f32,
        ldy: usize,
    ) {
        // Weight tiles outermost: a tile's rows stay in L1 while every
        // activation row (in L2) passes over them, so each weight is read
        // from memory once.
        let mut j = 0;
        while j < count {
            let c = C.min(count - j);
            let mut i = 0;
            while i < rows {
                let r = R.min(rows - i);
                let xs = x.as_ptr().add(i * k);
                let ws = w.as_ptr().add(j * k);
                // The first pass over a weight tile prefetches the next one:
                // the hardware prefetcher alone leaves the loads waiting on
                // memory when the weights are far larger than the caches.
                let next = (i == 0 && j + c < count).then(|| ws.add(c * k));
                let mut out = [[0f32; C]; R];
                match (r, c) {
                    (4, 3) => tile::<4, 3>(xs, ws, k, next, &mut out),
                    (4, 2) => tile::<4, 2>(xs, ws, k, next, &mut out),
                    (4, 1) => tile::<4, 1>(xs, ws, k, next, &mut out),
                    (3, 3) => tile::<3, 3>(xs, ws, k, next, &mut out),
                    (3, 2) => tile::<3, 2>(xs, ws, k, next, &mut out),
                    (3, 1) => tile::<3, 1>(xs, ws, k, next, &mut out),
                    (2, 3) => tile::<2, 3>(xs, ws, k, next, &mut out),
                    (2, 2) => tile::<2, 2>(xs, ws, k, next, &mut out),
                    (2, 1) => tile::<2, 1>(xs, ws, k, next, &mut out),
                    (1, 3) => tile::<1, 3>(xs, ws, k, next, &mut out),
                    (1, 2) => tile::<1, 2>(xs, ws, k, next, &mut out),
                    _ => tile::<1, 1>(xs, ws, k, next, &mut out),
                }
                for (a, row) in out.iter().enumerate().take(r) {
                    for (b, v) in row.iter().enumerate().take(c) {
                        let bias = bias.map_or(0.0, |bias| bias[j + b]);
                        *y.add((i + a) * ldy + j + b) = v + bias;
                    }
                }
                i += r;
            }
            j += c;
        }
    }

    /// `out[a][b] = x[a] · w[b]` for `TR` rows of `x` and `TC` rows of `w`
    /// (both with row stride `k`), 8 lanes at a time plus a scalar tail;
    /// prefetches the `TC` rows at `next` (if any) into L1 meanwhile.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const TR: usize, const TC: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
        next: Option<*const f32>,
        out: &mut [[f32; C]; R],
    ) {
        let mut acc = [[_mm256_setzero_ps(); TC]; TR];
        let full = k / 8 * 8;
        let mut t = 0;
        while t < full {
            if let Some(next) = next {
                // The next tile may be shorter than `TC` rows: prefetching
                // past the slice is harmless, hence `wrapping_add`.
                for b in 0..TC {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * k + t) as *const i8);
                }
            }
            let mut wv = [_mm256_setzero_ps(); TC];
            for (b, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(b * k + t));
            }
            for (a, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(a * k + t));
                for (sum, wv) in row.iter_mut().zip(&wv) {
                    *sum = _mm256_fmadd_ps(xv, *wv, *sum);
                }
            }
            t += 8;
        }
        for (a, row) in acc.iter().enumerate() {
            for (b, sum) in row.iter().enumerate() {
                let mut s = horizontal_sum(*sum);
                for u in full..k {
                    s += *x.add(a * k + u) * *w.add(b * k + u);
                }
                out[a][b] = s;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}
