//! ggml's tensor types: their block layouts, and dequantizing each to f32.

use half::{bf16, f16};

/// ggml tensor types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Bf16,
    Other(u32),
}

impl GgmlType {
    pub(super) fn from_u32(t: u32) -> GgmlType {
        match t {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block)
    pub(super) fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (QK_K, 84),
            GgmlType::Q3K => (QK_K, 110),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
            GgmlType::Other(_) => return None,
        })
    }
}

/// Dequantizes `n` values of type `ty` from `raw` (llama.cpp's block layouts).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    // The byte count must match `n` before anything is allocated for it.
    let (per, bytes) = ty
        .block()
        .ok_or_else(|| format!("ggml type {ty:?} is not supported"))?;
    if !n.is_multiple_of(per) || (n / per).checked_mul(bytes) != Some(raw.len()) {
        return Err(format!(
            "{n} values of {ty:?} need {} bytes, got {}",
            (n / per).saturating_mul(bytes),
            raw.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(half)),
        GgmlType::Bf16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in raw.chunks_exact(34) {
                let d = half(&block[0..2]);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for block in raw.chunks_exact(18) {
                let d = half(&block[0..2]);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for block in raw.chunks_exact(20) {
                let d = half(&block[0..2]);
                let m = half(&block[2..4]);
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = ty == GgmlType::Q5_1;
            for block in raw.chunks_exact(if with_min { 24 } else { 22 }) {
                let d = half(&block[0..2]);
                // Q5_0 centres its 5-bit values on 16; Q5_1 adds a minimum.
                let (m, rest) = if with_min {
                    (half(&block[2..4]), &block[4..])
                } else {
                    (-16.0 * d, &block[2..])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..];
                // Bit j of `qh` is the fifth bit of value j (low nibbles,
                // values 0–15), bit j + 16 that of value j + 16.
                let value = |low: u8, high_bit: usize| {
                    let q = low as u32 | (((qh >> high_bit) & 1) << 4);
                    d * q as f32 + m
                };
                out.extend(qs.iter().enumerate().map(|(j, &q)| value(q & 0x0f, j)));
                out.extend(qs.iter().enumerate().map(|(j, &q)| value(q >> 4, j + 16)));
            }
        }
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            let decode: fn(&[u8]) -> [f32; QK_K] = match ty {
                GgmlType::Q2K => k_quants::q2_k,
                GgmlType::Q3K => k_quants::q3_k,
                GgmlType::Q4K => k_quants::q4_k,
                GgmlType::Q5K => k_quants::q5_k,
                _ => k_quants::q6_k,
            };
            let (_, bytes) = ty.block().expect("K-quants have a block layout");
            raw.chunks_exact(bytes).for_each(|b| out.extend(decode(b)));
        }
        GgmlType::Other(t) => return Err(format!("ggml type {t} is not supported")),
    }
    if out.len() != n {
        return Err(format!("expected {n} values, decoded {}", out.len()));
    }
    Ok(out)
}

/// Values per K-quant super-block.
const QK_K: usize = 256;

/// llama.cpp's K-quants: 256-value super-blocks of 16 or 32-value sub-blocks,
/// each sub-block with its own quantized scale (and minimum), the
/// super-block with f16 factors for those. Layouts as `block_q*_K` in
/// ggml-common.h; each function decodes one super-block.
mod k_quants {
    use super::QK_K;
    use half::f16;

    fn half(b: &[u8]) -> f32 {
        f16::from_le_bytes([b[0], b[1]]).to_f32()
    }

    /// Scale and minimum (6 bits each) of sub-block `j` of Q4_K / Q5_K,
    /// packed in 12 bytes (ggml's `get_scale_min_k4`).
    fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
        let (sc, m) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        };
        (sc as f32, m as f32)
    }

    /// `scales[16]` (4-bit scale | 4-bit min), `qs[64]` (2 bits), `d`, `dmin`.
    pub fn q2_k(b: &[u8]) -> [f32; QK_K] {
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let (d, dmin) = (half(&b[80..82]), half(&b[82..84]));
        let mut y = [0f32; QK_K];
        let mut at = 0;
        for (half_block, q) in qs.chunks_exact(32).enumerate() {
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let sc = scales[half_block * 8 + shift + part];
                    let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                    for &ql in &q[part * 16..part * 16 + 16] {
                        y[at] = dl * ((ql >> shift) & 3) as f32 - ml;
                        at += 1;
                    }
                }
            }
        }
        y
    }

    /// `hmask[32]` (third bits), `qs[64]` (low 2 bits), `scales[12]` (6-bit,
    /// offset 32), `d`.
    pub fn q3_k(b: &[u8]) -> [f32; QK_K] {
        let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
        let d = half(&b[108..110]);
        // Unpack 16 6-bit scales: low 4 bits from bytes 0–7, high 2 bits from 8–11.
        let scale = |i: usize| -> f32 {
            let low = (packed[i % 8] >> (4 * (i / 8))) & 0x0f;
            let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
            ((low | (high << 4)) as i32 - 32) as f32
        };
        let mut y = [0f32; QK_K];
        let mut at = 0;
        let mut bit = 0;
        for (half_block, q) in qs.chunks_exact(32).enumerate() {
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d * scale(half_block * 8 + shift + part);
                    for l in part * 16..part * 16 + 16 {
                        let low = ((q[l] >> shift) & 3) as i32;
                        let high = if hmask[l] & (1 << bit) != 0 { 0 } else { 4 };
                        y[at] = dl * (low - high) as f32;
                        at += 1;
                    }
                }
                bit += 1;
            }
        }
        y
    }

    /// `d`, `dmin`, `scales[12]`, `qs[128]` (4 bits).
    pub fn q4_k(b: &[u8]) -> [f32; QK_K] {
        let (d, dmin, scales, qs) = (half(&b[0..2]), half(&b[2..4]), &b[4..16], &b[16..144]);
        let mut y = [0f32; QK_K];
        for (chunk, q) in qs.chunks_exact(32).enumerate() {
            let (s1, m1) = scale_min(2 * chunk, scales);
            let (s2, m2) = scale_min(2 * chunk + 1, scales);
            for (l, &v) in q.iter().enumerate() {
                y[64 * chunk + l] = d * s1 * (v & 0x0f) as f32 - dmin * m1;
                y[64 * chunk + 32 + l] = d * s2 * (v >> 4) as f32 - dmin * m2;
            }
        }
        y
    }

    /// `d`, `dmin`, `scales[12]`, `qh[32]` (fifth bits), `qs[128]` (low 4 bits).
    pub fn q5_k(b: &[u8]) -> [f32; QK_K] {
        let (d, dmin, scales) = (half(&b[0..2]), half(&b[2..4]), &b[4..16]);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        let mut y = [0f32; QK_K];
        for (chunk, q) in qs.chunks_exact(32).enumerate() {
            let (s1, m1) = scale_min(2 * chunk, scales);
            let (s2, m2) = scale_min(2 * chunk + 1, scales);
            let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
            for (l, &v) in q.iter().enumerate() {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * chunk + l] = d * s1 * ((v & 0x0f) + h1) as f32 - dmin * m1;
                y[64 * chunk + 32 + l] = d * s2 * ((v >> 4) + h2) as f32 - dmin * m2;
            }
        }
        y
    }

    /// `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]` (i8), `d`.
    pub fn q6_k(b: &[u8]) -> [f32; QK_K] {
        let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = half(&b[208..210]);
        let mut y = [0f32; QK_K];
        for n in 0..2 {
            let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
            let sc = &scales[8 * n..8 * n + 8];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (part, &q) in q.iter().enumerate() {
                    let scale = sc[is + 2 * part] as i8 as f32;
                    y[128 * n + 32 * part + l] = d * scale * (q as i32 - 32) as f32;
                }
            }
        }
        y
    }
}
