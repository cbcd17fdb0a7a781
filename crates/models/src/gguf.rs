//! GGUF import (llama.cpp's format): read the file, dequantize its tensors
//! (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K–Q6_K)
//! to f32, undo llama.cpp's Q/K row permutation, rename tensors to HF's keys,
//! and rebuild `config.json` and a `tokenizer.json` from the metadata
//! (GPT-2-style byte-level BPE, or SentencePiece BPE with byte fallback and
//! merges derived from the scores). The result loads as a Llama policy
//! directly, or is written out as an HF directory.
//!
//! No maintained standalone GGUF crate fitted (candle's reader lives inside
//! candle-core), so this is a small reader of the documented format:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::{json, Value as Json};
use tch::{Device, Tensor};

use crate::error::{ModelError, Result};
use crate::hf::{build_causal, LanguageModel};
use crate::tokenizer::TextTokenizer;
use crate::weights::{DType, Weights};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

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
    fn from_u32(t: u32) -> GgmlType {
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
    fn block(self) -> Option<(usize, usize)> {
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

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
}

impl TensorInfo {
    /// PyTorch shape (ggml dims reversed).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("unexpected end of file at byte {} (truncated?)", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()? as usize;
        let bytes = self.take(n)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.u64()? as usize;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    pub fn read(path: &Path) -> Result<GgufFile> {
        if !path.is_file() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let data = std::fs::read(path).map_err(|e| ModelError::file(path, e.to_string()))?;
        Self::parse(path, data).map_err(|m| ModelError::file(path, m))
    }

    fn parse(path: &Path, data: Vec<u8>) -> std::result::Result<GgufFile, String> {
        let mut c = Cursor { buf: &data, pos: 0 };
        if c.take(4)? != b"GGUF" {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 or 3)"));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty).map_err(|e| format!("metadata `{key}`: {e}"))?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            let dims = (0..nd)
                .map(|_| c.u64())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let ty = GgmlType::from_u32(c.u32()?);
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(align) * align;
        let file = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data,
            data_start,
        };
        for t in &file.tensors {
            file.raw(t)?;
        }
        Ok(file)
    }

    fn raw(&self, t: &TensorInfo) -> std::result::Result<&[u8], String> {
        let (per, bytes) = t.ty.block().ok_or_else(|| {
            format!(
                "tensor `{}` has ggml type {:?}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K",
                t.name, t.ty
            )
        })?;
        let n = t.numel();
        if !n.is_multiple_of(per) {
            return Err(format!(
                "tensor `{}`: {n} elements is not a whole number of blocks",
                t.name
            ));
        }
        let len = n / per * bytes;
        let start = self.data_start + t.offset as usize;
        self.data.get(start..start + len).ok_or_else(|| {
            format!(
                "tensor `{}` runs past the end of the file (truncated?)",
                t.name
            )
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| ModelError::file(&self.path, format!("metadata `{key}` is missing")))
    }

    fn need_u64(&self, key: &str) -> Result<u64> {
        self.need(key)?.as_u64().ok_or_else(|| {
            ModelError::file(&self.path, format!("metadata `{key}` is not an integer"))
        })
    }

    /// The tensor dequantized to f32, in PyTorch shape.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Tensor> {
        let raw = self.raw(t).map_err(|m| ModelError::file(&self.path, m))?;
        let values = dequantize(t.ty, raw, t.numel())
            .map_err(|m| ModelError::file(&self.path, format!("tensor `{}`: {m}", t.name)))?;
        Ok(Tensor::from_slice(&values).view(t.shape().as_slice()))
    }
}

/// Dequantizes `n` values of type `ty` from `raw` (llama.cpp's block layouts).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
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

/// Undoes llama.cpp's `permute` of Q/K projection rows (its RoPE pairs
/// adjacent features; HF's rotate-half pairs feature i with i + D/2).
pub fn unpermute_qk(w: &Tensor, heads: i64) -> Tensor {
    let size = w.size();
    let rows = size[0];
    // llama.cpp: reshape(h, 2, D/2, in).swapaxes(1, 2); inverse: reshape(h, D/2, 2, in).swapaxes(1, 2).
    w.reshape([heads, rows / heads / 2, 2, -1])
        .transpose(1, 2)
        .reshape(size.as_slice())
        .contiguous()
}

/// A GGUF model converted to HF form, in memory.
pub struct Imported {
    pub source: PathBuf,
    pub config: Json,
    pub generation_config: Json,
    pub tensors: Vec<(String, Tensor)>,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub tokenizer_config: Json,
}

fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = name.rsplit_once('.')?;
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Reads a Llama-architecture GGUF file into HF form.
pub fn import(path: &Path) -> Result<Imported> {
    let f = GgufFile::read(path)?;
    let arch = f
        .need("general.architecture")?
        .as_str()
        .unwrap_or("?")
        .to_string();
    if arch != "llama" {
        return Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            arch: format!("{arch} (GGUF)"),
            supported: "llama (GGUF)".into(),
        });
    }
    if let Some(kind) = f.get("llama.rope.scaling.type").and_then(Value::as_str) {
        if kind != "none" {
            return Err(ModelError::file(
                path,
                format!("RoPE scaling `{kind}` is not supported"),
            ));
        }
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = f.need_u64(&key("embedding_length"))? as i64;
    let heads = f.need_u64(&key("attention.head_count"))? as i64;
    let kv_heads = f
        .get(&key("attention.head_count_kv"))
        .and_then(Value::as_u64)
        .map_or(heads, |v| v as i64);
    let layers = f.need_u64(&key("block_count"))? as i64;
    let ffn = f.need_u64(&key("feed_forward_length"))? as i64;
    let head_dim = f
        .get(&key("attention.key_length"))
        .and_then(Value::as_u64)
        .map_or(hidden / heads, |v| v as i64);
    let eps = f
        .get(&key("attention.layer_norm_rms_epsilon"))
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    // Stored as f32 in GGUF: print it the way HF configs write it (1e-05, not 9.99e-06).
    let eps: f64 = format!("{:e}", eps as f32).parse().unwrap_or(eps);
    let theta = f
        .get(&key("rope.freq_base"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let context = f
        .get(&key("context_length"))
        .and_then(Value::as_u64)
        .unwrap_or(2048);

    let mut tensors = Vec::with_capacity(f.tensors.len());
    let mut vocab = None;
    for t in &f.tensors {
        let name = hf_name(&t.name).ok_or_else(|| {
            ModelError::file(
                path,
                format!("unexpected tensor `{}` for a llama GGUF", t.name),
            )
        })?;
        let mut w = f.tensor_f32(t)?;
        if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            w = unpermute_qk(&w, heads);
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            w = unpermute_qk(&w, kv_heads);
        }
        if name == "model.embed_tokens.weight" {
            vocab = Some(w.size()[0]);
        }
        tensors.push((name, w));
    }
    let vocab = vocab.ok_or_else(|| ModelError::file(path, "no token_embd.weight tensor"))?;
    let tied = !tensors.iter().any(|(n, _)| n == "lm_head.weight");
    let bias = tensors.iter().any(|(n, _)| n.ends_with("q_proj.bias"));
    let bos = f.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64);
    let eos = f.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": context,
        "tie_word_embeddings": tied,
        "attention_bias": bias,
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    });
    let generation_config = json!({ "bos_token_id": bos, "eos_token_id": eos });
    let (tokenizer, tokenizer_config) = match f.get("tokenizer.ggml.model") {
        Some(_) => {
            let (t, c) = gguf_tokenizer(&f)?;
            (Some(t), c)
        }
        None => (None, json!({})),
    };
    Ok(Imported {
        source: path.to_path_buf(),
        config,
        generation_config,
        tensors,
        tokenizer,
        tokenizer_config,
    })
}

/// The llama.cpp pre-tokenizer names → HF pre-tokenizer JSON.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        // GPT-2's regex on top of one-digit splits.
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]
        }),
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]
        }),
        other => {
            return Err(ModelError::file(
                path,
                format!(
                    "GGUF pre-tokenizer `{other}` is not supported (smollm, starcoder, refact, gpt2, llama-bpe)"
                ),
            ))
        }
    })
}

/// Builds an HF byte-level BPE tokenizer from `tokenizer.ggml.*` metadata.
/// BPE merges implied by a SentencePiece vocabulary, as transformers'
/// `generate_merges` derives them: every split of a token into two tokens of
/// the vocabulary, ordered by the merged token's score (best first, then
/// longer left and right parts first), ties kept in vocabulary order.
fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    // Python's dict semantics for a repeated token: its first position, its
    // last id and score.
    let id: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let score: HashMap<&str, f64> = tokens
        .iter()
        .map(String::as_str)
        .zip(scores.iter().copied())
        .collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for token in tokens.iter().take(scores.len()) {
        if !seen.insert(token.as_str()) {
            continue;
        }
        let score = score[token.as_str()];
        let mut local: Vec<(f64, usize, usize, &str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (score, l.chars().count(), r.chars().count(), l, r))
            .collect();
        local.sort_by_key(|&(_, _, _, l, r)| (id[l], id[r]));
        merges.extend(local);
    }
    // Stable and descending, like Python's `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

fn gguf_tokenizer(f: &GgufFile) -> Result<(tokenizers::Tokenizer, Json)> {
    let path = &f.path;
    let model = f.need("tokenizer.ggml.model")?.as_str().unwrap_or("?");
    if model != "gpt2" && model != "llama" {
        return Err(ModelError::file(
            path,
            format!(
                "GGUF tokenizer model `{model}` is not supported (`gpt2` byte-level BPE, \
                 `llama` SentencePiece BPE)"
            ),
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        f.need(key)?
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .ok_or_else(|| ModelError::file(path, format!("metadata `{key}` is not an array")))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let sentencepiece = model == "llama";
    let merges: Vec<(String, String)> = if f.get("tokenizer.ggml.merges").is_some() {
        strings("tokenizer.ggml.merges")?
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((l, r)) => Ok((l.to_string(), r.to_string())),
                None => Err(ModelError::file(
                    path,
                    format!("merge `{m}` in `tokenizer.ggml.merges` is not two tokens"),
                )),
            })
            .collect::<Result<_>>()?
    } else if sentencepiece {
        // SentencePiece files carry scores instead of merges.
        let scores: Vec<f64> = f
            .need("tokenizer.ggml.scores")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| {
                ModelError::file(
                    path,
                    "metadata `tokenizer.ggml.scores` is not an array of numbers",
                )
            })?;
        merges_from_scores(&tokens, &scores)
    } else {
        return Err(ModelError::file(
            path,
            "metadata `tokenizer.ggml.merges` is missing",
        ));
    };
    let types: Vec<u64> = f
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // llama.cpp token types: 2 = unknown, 3 = control (both special, as
    // transformers adds them), 4 = user-defined (added, not special).
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4 || (sentencepiece && t == 2))
        .map(|(i, &t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t != 4})
        })
        .collect();
    let token = |key: &str| {
        f.get(key)
            .and_then(Value::as_u64)
            .and_then(|i| tokens.get(i as usize).cloned())
    };
    let bos = token("tokenizer.ggml.bos_token_id");
    let eos = token("tokenizer.ggml.eos_token_id");
    let unk = token("tokenizer.ggml.unknown_token_id");
    let pad = token("tokenizer.ggml.padding_token_id");
    // Without the flag, llama.cpp (and transformers) add BOS for SentencePiece.
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(sentencepiece);
    let post = match (&bos, add_bos) {
        (Some(b), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.as_str(): {"id": b, "ids": [vocab[b.as_str()]], "tokens": [b]}}
        }),
        _ if sentencepiece => Json::Null,
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true})
        }
    };
    // SentencePiece as transformers' `LlamaTokenizer` builds it: `▁` for
    // spaces (one prepended), byte fallback, fused unknowns.
    let (pre_tokenizer, decoder) = if sentencepiece {
        (
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]}),
        )
    } else {
        (
            pre_tokenizer(path, pre)?,
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        )
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": sentencepiece, "byte_fallback": sentencepiece,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        }
    });
    let tokenizer: tokenizers::Tokenizer = tj.to_string().parse().map_err(|e| {
        ModelError::file(
            path,
            format!("cannot build the tokenizer from metadata: {e}"),
        )
    })?;
    let mut config = json!({ "model_max_length": 1_000_000_000i64 });
    for (k, v) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(v) = v {
            config[k] = json!(v);
        }
    }
    if let Some(t) = f.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(t);
    }
    Ok((tokenizer, config))
}

impl Imported {
    fn text_tokenizer(&self, model_vocab: i64) -> Result<Option<TextTokenizer>> {
        let Some(tok) = &self.tokenizer else {
            return Ok(None);
        };
        let s = |k: &str| self.tokenizer_config[k].as_str().map(str::to_string);
        TextTokenizer::from_parts(
            tok.clone(),
            &self.source,
            s("chat_template"),
            s("bos_token"),
            s("eos_token"),
            model_vocab,
        )
        .map(Some)
    }

    /// Writes an HF directory: `config.json`, `generation_config.json`,
    /// `model.safetensors` (f32), `tokenizer.json`, `tokenizer_config.json`.
    pub fn write_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e.to_string()))?;
        let write_json = |name: &str, v: &Json| {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
            std::fs::write(&p, text + "\n").map_err(|e| ModelError::file(&p, e.to_string()))
        };
        write_json("config.json", &self.config)?;
        write_json("generation_config.json", &self.generation_config)?;
        let st = dir.join("model.safetensors");
        Tensor::write_safetensors(&self.tensors, &st)
            .map_err(|e| ModelError::file(&st, e.to_string()))?;
        if let Some(tok) = &self.tokenizer {
            let p = dir.join("tokenizer.json");
            tok.save(&p, false)
                .map_err(|e| ModelError::file(&p, e.to_string()))?;
            write_json("tokenizer_config.json", &self.tokenizer_config)?;
        }
        Ok(())
    }
}

/// Loads a Llama GGUF file as a policy with its tokenizer.
pub fn load(path: &Path, dtype: DType, device: Device) -> Result<LanguageModel> {
    let imported = import(path)?;
    let weights = Weights::from_tensors(
        path,
        imported
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
    );
    let (policy, architecture) = build_causal(path, &imported.config, &weights, dtype, device)?;
    let tokenizer = imported.text_tokenizer(policy.vocab_size())?;
    Ok(LanguageModel {
        policy,
        tokenizer,
        architecture,
        source: path.to_path_buf(),
    })
}

/// Only the tokenizer of a GGUF file (no tensors dequantized).
pub fn load_tokenizer(path: &Path) -> Result<Option<TextTokenizer>> {
    let f = GgufFile::read(path)?;
    if f.get("tokenizer.ggml.model").is_none() {
        return Ok(None);
    }
    let (tok, config) = gguf_tokenizer(&f)?;
    let vocab = f
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .map_or(tok.get_vocab_size(true) as i64, |t| t.shape()[0]);
    let s = |k: &str| config[k].as_str().map(str::to_string);
    TextTokenizer::from_parts(
        tok,
        path,
        s("chat_template"),
        s("bos_token"),
        s("eos_token"),
        vocab,
    )
    .map(Some)
}
