//! The inner kernel: a block of weight rows dotted with every activation
//! row, `R × C` outputs at a time (`R` activation rows, `C` weight rows) so
//! each loaded weight vector feeds `R` fused multiply-adds. Weights are f32
//! ([`block`]) or bf16 ([`block_bf16`], widened to f32 in registers; f32
//! products and sums).

/// Activation rows per tile.
const R: usize = 4;
/// Weight rows per tile. `R · C` = 12 accumulators + 3 weight vectors + 1
/// activation vector = the 16 AVX2 registers.
const C: usize = 3;
/// Weight rows per bf16 tile: each 16-weight load becomes two vectors (even
/// and odd weights), so 8 accumulators + 2 loads + 2 widened + 1 activation
/// fit the registers where 3 rows would spill accumulators to the stack.
const C_BF16: usize = 2;

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

/// The f32 value of bf16 bits (exact: bf16 is f32's upper half).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The bf16 bits nearest `v`, ties to even; NaN becomes `0x7FC0`. LibTorch
/// rounds f32 to `BFloat16` so (`c10::detail::round_to_nearest_even`).
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7FC0;
    }
    let bits = v.to_bits();
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 bits, as LibTorch stores `BFloat16` elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// What the bf16-weight kernel reads activations as and writes results as:
/// f32, or [`Bf16`] (widened exactly on reading, rounded to nearest even
/// once on writing). Implemented for those two only: the methods hand the
/// SIMD code concrete types, so it is compiled (optimised) here rather
/// than instantiated in each caller's crate at the caller's opt-level.
pub trait Element: Copy + Send + Sync + sealed::Sealed {
    /// The value, widened exactly.
    fn to_f32(self) -> f32;
    /// [`pair_layout`] of rows of `Self`.
    #[doc(hidden)]
    fn pair_layout(x: &[Self], rows: usize, k: usize) -> Vec<f32>;
    /// Where results of this kind go.
    #[doc(hidden)]
    fn out(y: *mut Self) -> Out;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::Bf16 {}
}

/// The destination of a block's results, by kind.
#[derive(Clone, Copy)]
#[doc(hidden)]
pub enum Out {
    F32(*mut f32),
    Bf16(*mut u16),
}

impl Out {
    /// Writes `v` at element `i`, rounded to the destination's kind.
    ///
    /// # Safety
    /// Element `i` is valid for writes and no one else accesses it.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: f32) {
        match self {
            Out::F32(p) => *p.add(i) = v,
            Out::Bf16(p) => *p.add(i) = f32_to_bf16(v),
        }
    }

    /// The destination `columns` elements further on.
    pub fn offset(self, columns: usize) -> Out {
        match self {
            Out::F32(p) => Out::F32(p.wrapping_add(columns)),
            Out::Bf16(p) => Out::Bf16(p.wrapping_add(columns)),
        }
    }
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn pair_layout(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if simd_available() {
            let mut out = vec![0f32; rows * k];
            // SAFETY: AVX2 is present; `x` holds `rows` rows of `k` (the
            // callers check) and `out` as many.
            unsafe { avx2::pair_layout_f32(&x[..rows * k], rows, k, &mut out) };
            return out;
        }
        pair_layout_of(x, rows, k, |v| v)
    }
    fn out(y: *mut f32) -> Out {
        Out::F32(y)
    }
}

impl Element for Bf16 {
    fn to_f32(self) -> f32 {
        bf16_to_f32(self.0)
    }
    fn pair_layout(x: &[Bf16], rows: usize, k: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if simd_available() {
            let mut out = vec![0f32; rows * k];
            // SAFETY: as for f32; `Bf16` is `repr(transparent)` over `u16`.
            unsafe {
                let bits = std::slice::from_raw_parts(x.as_ptr() as *const u16, rows * k);
                avx2::pair_layout_bf16(bits, rows, k, &mut out);
            }
            return out;
        }
        pair_layout_of(x, rows, k, |v| bf16_to_f32(v.0))
    }
    fn out(y: *mut Bf16) -> Out {
        Out::Bf16(y as *mut u16)
    }
}

/// Elements per bf16 SIMD step: one 256-bit load of weights.
pub const BF16_STEP: usize = 16;

/// `x` laid out for [`block_bf16`]: in each row, every full group of
/// [`BF16_STEP`] elements becomes its 8 even-indexed elements then its 8
/// odd-indexed ones (the tail after the last full group stays as it is).
/// A 256-bit load of 16 bf16 weights holds them in pairs, low half even:
/// shifting each 32-bit lane left by 16 gives the even weights as f32,
/// masking off its low half the odd ones, so each load widens with one
/// instruction per 8 weights, and the activations meet them in that order.
/// Elements are widened to f32 on the way.
pub fn pair_layout<X: Element>(x: &[X], rows: usize, k: usize) -> Vec<f32> {
    X::pair_layout(x, rows, k)
}

/// [`pair_layout`] in plain loops, the reference for the SIMD layouts.
#[cfg(test)]
pub fn pair_layout_portable<X: Element>(x: &[X], rows: usize, k: usize) -> Vec<f32> {
    pair_layout_of(x, rows, k, X::to_f32)
}

fn pair_layout_of<X: Copy>(x: &[X], rows: usize, k: usize, wide: impl Fn(X) -> f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * k);
    for row in x.chunks_exact(k).take(rows) {
        let groups = row.chunks_exact(BF16_STEP);
        let tail = groups.remainder();
        for g in groups {
            for i in 0..BF16_STEP / 2 {
                out.push(wide(g[2 * i]));
            }
            for i in 0..BF16_STEP / 2 {
                out.push(wide(g[2 * i + 1]));
            }
        }
        out.extend(tail.iter().map(|&v| wide(v)));
    }
    out
}

/// `y[i·ldy + j] = x[i] · w[j] + bias[j]` as [`block`], with `w` bf16 bits
/// `[count, k]` and `xp` = [`pair_layout`]`(x)`; products and sums in f32,
/// each result converted to `Y` once.
///
/// # Safety
/// As [`block`] (`xp.len() ≥ rows·k`, `w.len() ≥ count·k`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_bf16(
    xp: &[f32],
    rows: usize,
    k: usize,
    w: &[u16],
    count: usize,
    bias: Option<&[f32]>,
    y: Out,
    ldy: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        return avx2::block_bf16(xp, rows, k, w, count, bias, y, ldy);
    }
    block_bf16_portable(xp, rows, k, w, count, bias, y, ldy)
}

/// Plain loops over the same layout: the fallback without AVX2/FMA.
///
/// # Safety
/// As [`block_bf16`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_bf16_portable(
    xp: &[f32],
    rows: usize,
    k: usize,
    w: &[u16],
    count: usize,
    bias: Option<&[f32]>,
    y: Out,
    ldy: usize,
) {
    // Position `t` of a row of `xp` holds element `source(t)` of `x`.
    let source = |t: usize| {
        let (group, within) = (t / BF16_STEP * BF16_STEP, t % BF16_STEP);
        if group + BF16_STEP > k {
            t
        } else if within < BF16_STEP / 2 {
            group + 2 * within
        } else {
            group + 2 * (within - BF16_STEP / 2) + 1
        }
    };
    for j in 0..count {
        let wj = &w[j * k..(j + 1) * k];
        let b = bias.map_or(0.0, |b| b[j]);
        for i in 0..rows {
            let xi = &xp[i * k..(i + 1) * k];
            let dot: f32 = (0..k).map(|t| xi[t] * bf16_to_f32(wj[source(t)])).sum();
            y.write(i * ldy + j, dot + b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BF16_STEP, C, C_BF16, R};

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

    /// [`super::block_bf16`]: as [`block`], over bf16 weights in `R × C_BF16`
    /// tiles.
    ///
    /// # Safety
    /// As [`super::block_bf16`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_bf16(
        xp: &[f32],
        rows: usize,
        k: usize,
        w: &[u16],
        count: usize,
        bias: Option<&[f32]>,
        y: super::Out,
        ldy: usize,
    ) {
        let mut j = 0;
        while j < count {
            let c = C_BF16.min(count - j);
            let mut i = 0;
            while i < rows {
                let r = R.min(rows - i);
                let xs = xp.as_ptr().add(i * k);
                let ws = w.as_ptr().add(j * k);
                let next = (i == 0 && j + c < count).then(|| ws.add(c * k));
                let mut out = [[0f32; C]; R];
                match (r, c) {
                    (4, 2) => tile_bf16::<4, 2>(xs, ws, k, next, &mut out),
                    (4, 1) => tile_bf16::<4, 1>(xs, ws, k, next, &mut out),
                    (3, 2) => tile_bf16::<3, 2>(xs, ws, k, next, &mut out),
                    (3, 1) => tile_bf16::<3, 1>(xs, ws, k, next, &mut out),
                    (2, 2) => tile_bf16::<2, 2>(xs, ws, k, next, &mut out),
                    (2, 1) => tile_bf16::<2, 1>(xs, ws, k, next, &mut out),
                    (1, 2) => tile_bf16::<1, 2>(xs, ws, k, next, &mut out),
                    _ => tile_bf16::<1, 1>(xs, ws, k, next, &mut out),
                }
                for (a, row) in out.iter().enumerate().take(r) {
                    for (b, v) in row.iter().enumerate().take(c) {
                        let bias = bias.map_or(0.0, |bias| bias[j + b]);
                        y.write((i + a) * ldy + j + b, v + bias);
                    }
                }
                i += r;
            }
            j += c;
        }
    }

    /// `out[a][b] = x[a] · w[b]` for `TR` rows of `x` (in
    /// [`super::pair_layout`]) and `TC` rows of bf16 `w`, 16 weights per
    /// load: the even ones widened by a shift, the odd ones by masking, each
    /// feeding `TR` fused multiply-adds in f32; a scalar tail. Prefetches
    /// the rows at `next` meanwhile (without one, the tile's own rows: no
    /// branch in the loop).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_bf16<const TR: usize, const TC: usize>(
        x: *const f32,
        w: *const u16,
        k: usize,
        next: Option<*const u16>,
        out: &mut [[f32; C]; R],
    ) {
        let mut acc = [[_mm256_setzero_ps(); TC]; TR];
        let odd_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let ahead = next.unwrap_or(w);
        let full = k / BF16_STEP * BF16_STEP;
        let mut t = 0;
        while t < full {
            for b in 0..TC {
                // The next tile may be shorter than `TC` rows: prefetching
                // past the slice is harmless, hence `wrapping_add`.
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(b * k + t) as *const i8);
            }
            let mut raw = [_mm256_setzero_si256(); TC];
            for (b, v) in raw.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(w.add(b * k + t) as *const __m256i);
            }
            let even = raw.map(|v| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)));
            for (a, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(a * k + t));
                for (sum, wv) in row.iter_mut().zip(&even) {
                    *sum = _mm256_fmadd_ps(xv, *wv, *sum);
                }
            }
            let odd = raw.map(|v| _mm256_castsi256_ps(_mm256_and_si256(v, odd_mask)));
            for (a, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(a * k + t + BF16_STEP / 2));
                for (sum, wv) in row.iter_mut().zip(&odd) {
                    *sum = _mm256_fmadd_ps(xv, *wv, *sum);
                }
            }
            t += BF16_STEP;
        }
        for (a, row) in acc.iter().enumerate() {
            for (b, sum) in row.iter().enumerate() {
                let mut s = horizontal_sum(*sum);
                for u in full..k {
                    s += *x.add(a * k + u) * super::bf16_to_f32(*w.add(b * k + u));
                }
                out[a][b] = s;
            }
        }
    }

    /// [`super::pair_layout`] of f32 rows: each group of 16 split into its
    /// even and odd elements with two shuffles and two lane permutes.
    ///
    /// # Safety
    /// AVX2 is present; `x` and `out` hold `rows · k` elements.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pair_layout_f32(x: &[f32], rows: usize, k: usize, out: &mut [f32]) {
        assert!(x.len() >= rows * k && out.len() >= rows * k);
        let full = k / BF16_STEP * BF16_STEP;
        for r in 0..rows {
            let (src, dst) = (x.as_ptr().add(r * k), out.as_mut_ptr().add(r * k));
            let mut t = 0;
            while t < full {
                let a = _mm256_loadu_ps(src.add(t));
                let b = _mm256_loadu_ps(src.add(t + 8));
                // Per 128-bit lane [a0 a2 b0 b2 | a4 a6 b4 b6]; the 64-bit
                // permute puts the halves in order: [a0 a2 a4 a6 b0 b2 b4 b6].
                let in_order = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                _mm256_storeu_ps(
                    dst.add(t),
                    in_order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
                );
                _mm256_storeu_ps(
                    dst.add(t + 8),
                    in_order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
                );
                t += BF16_STEP;
            }
            for u in full..k {
                *dst.add(u) = *src.add(u);
            }
        }
    }

    /// [`super::pair_layout`] of bf16 rows: as the weights, a shift widens
    /// the even elements and a mask the odd ones.
    ///
    /// # Safety
    /// As [`pair_layout_f32`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pair_layout_bf16(x: &[u16], rows: usize, k: usize, out: &mut [f32]) {
        assert!(x.len() >= rows * k && out.len() >= rows * k);
        let odd_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        let full = k / BF16_STEP * BF16_STEP;
        for r in 0..rows {
            let (src, dst) = (x.as_ptr().add(r * k), out.as_mut_ptr().add(r * k));
            let mut t = 0;
            while t < full {
                let raw = _mm256_loadu_si256(src.add(t) as *const __m256i);
                let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(raw));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(raw, odd_mask));
                _mm256_storeu_ps(dst.add(t), even);
                _mm256_storeu_ps(dst.add(t + 8), odd);
                t += BF16_STEP;
            }
            for u in full..k {
                *dst.add(u) = super::bf16_to_f32(*src.add(u));
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
