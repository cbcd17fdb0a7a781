//! The GGUF container: header, metadata key–values, tensor infos, and the
//! aligned data section each tensor's bytes are sliced from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::quant::{dequantize, GgmlType};
use crate::error::{ModelError, Result};

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

/// Bounds on what a GGUF file may declare, checked before anything is
/// allocated for it (besides being checked against the bytes left in the file).
pub mod limits {
    /// Tensors in one file (real models have a few thousand).
    pub const MAX_TENSORS: u64 = 1 << 20;
    /// Metadata key–value pairs in one file.
    pub const MAX_KV: u64 = 1 << 20;
    /// Elements of one metadata array (vocabularies are below a million).
    pub const MAX_ARRAY_LEN: u64 = 1 << 24;
    /// Metadata values in the whole file, array elements included.
    pub const MAX_VALUES: u64 = 1 << 24;
    /// Arrays nested in arrays (real files nest none).
    pub const MAX_ARRAY_DEPTH: usize = 4;
    /// Dimensions of one tensor (ggml's `GGML_MAX_DIMS`).
    pub const MAX_DIMS: u32 = 4;
    /// Largest `general.alignment` (a power of two).
    pub const MAX_ALIGNMENT: u64 = 1 << 20;
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
    /// PyTorch shape (ggml dims reversed). Every dim of a parsed file fits
    /// an `i64` (checked when read); larger ones saturate.
    pub fn shape(&self) -> Vec<i64> {
        self.dims
            .iter()
            .rev()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect()
    }

    /// The element count, `None` if it overflows.
    pub fn checked_numel(&self) -> Option<usize> {
        self.dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
    }

    /// The element count (checked not to overflow when the file was read;
    /// saturates otherwise).
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
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
    /// Metadata values read so far (bounded by [`limits::MAX_VALUES`]).
    values: u64,
}

type Parse<T> = std::result::Result<T, String>;

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Parse<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "unexpected end of file at byte {}: {n} bytes needed, {} left (truncated?)",
                    self.pos,
                    self.left()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Parse<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Parse<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_size` bytes each, checked against
    /// `limit` and against the bytes left in the file before anything is
    /// allocated for them.
    fn count(&mut self, what: &str, limit: u64, min_size: usize) -> Parse<usize> {
        let at = self.pos;
        let n = self.u64()?;
        if n > limit {
            return Err(format!(
                "{what} at byte {at} is {n}, over the limit of {limit}"
            ));
        }
        let n = n as usize; // ≤ limit, which fits
        let need = n.saturating_mul(min_size);
        if need > self.left() {
            return Err(format!(
                "{what} at byte {at} is {n}, which needs at least {need} bytes but only {} are left in the file (truncated or corrupt?)",
                self.left()
            ));
        }
        Ok(n)
    }

    fn string(&mut self) -> Parse<String> {
        let at = self.pos;
        let n = self.u64()?;
        if n > self.left() as u64 {
            return Err(format!(
                "string length at byte {at} is {n}, more than the {} bytes left in the file (truncated or corrupt?)",
                self.left()
            ));
        }
        let bytes = self.take(n as usize)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The fewest bytes a value of type `ty` takes (`None`: unknown type).
    fn min_size(ty: u32) -> Option<usize> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Parse<Value> {
        self.values += 1;
        if self.values > limits::MAX_VALUES {
            return Err(format!(
                "more than {} metadata values in the file",
                limits::MAX_VALUES
            ));
        }
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
                if depth >= limits::MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested more than {} deep",
                        limits::MAX_ARRAY_DEPTH
                    ));
                }
                let inner = self.u32()?;
                let size = Self::min_size(inner)
                    .ok_or_else(|| format!("unknown array element type {inner}"))?;
                let n = self.count("array length", limits::MAX_ARRAY_LEN, size)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
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
        Self::from_bytes(path, data)
    }

    /// Parses the bytes of a GGUF file; `path` names it in errors. Every
    /// count, length, dimension and offset is checked (against the file's
    /// length and [`limits`]) before anything is allocated for it, so a
    /// corrupt or hostile file gives an error, never a panic.
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<GgufFile> {
        Self::parse(path, data).map_err(|m| ModelError::file(path, m))
    }

    fn parse(path: &Path, data: Vec<u8>) -> Parse<GgufFile> {
        let mut c = Cursor {
            buf: &data,
            pos: 0,
            values: 0,
        };
        if c.take(4).map_err(|_| "not a GGUF file (too short)")? != b"GGUF" {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 or 3)"));
        }
        // A tensor info takes at least 24 bytes (name length, dim count,
        // type, offset), a key–value pair 13 (key length, type, a byte).
        let n_tensors = c.count("tensor count", limits::MAX_TENSORS, 24)?;
        let n_kv = c.count("metadata key-value count", limits::MAX_KV, 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c
                .value(ty, 0)
                .map_err(|e| format!("metadata `{key}`: {e}"))?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(format!("metadata key `{key}` appears twice"));
            }
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()?;
            if nd > limits::MAX_DIMS {
                return Err(format!(
                    "tensor `{name}` has {nd} dimensions, over the limit of {}",
                    limits::MAX_DIMS
                ));
            }
            let dims = (0..nd).map(|_| c.u64()).collect::<Parse<Vec<_>>>()?;
            if let Some(&d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
                return Err(format!(
                    "tensor `{name}` has a dimension of {d}, over the limit of {}",
                    i64::MAX
                ));
            }
            // The non-zero dims too (a zero elsewhere hides an overflow
            // that shape arithmetic, LibTorch's included, still meets).
            let nonzero = dims
                .iter()
                .filter(|&&d| d > 0)
                .try_fold(1u64, |n, &d| n.checked_mul(d));
            if nonzero.is_none_or(|n| n > i64::MAX as u64) {
                return Err(format!(
                    "tensor `{name}`: dimensions {dims:?} multiply past {}",
                    i64::MAX
                ));
            }
            let ty = GgmlType::from_u32(c.u32()?);
            let offset = c.u64()?;
            if !names.insert(name.clone()) {
                return Err(format!("tensor `{name}` appears twice"));
            }
            let t = TensorInfo {
                name,
                dims,
                ty,
                offset,
            };
            tensors.push(t);
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= limits::MAX_ALIGNMENT => a as usize,
                _ => {
                    return Err(format!(
                        "general.alignment is {v:?}; it must be a power of two from 1 to {}",
                        limits::MAX_ALIGNMENT
                    ))
                }
            },
        };
        // `pos` ≤ the file's length and `align` ≤ 2^20: no overflow.
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

    /// The bytes of `t` in the data section, checked to lie inside the file.
    fn raw(&self, t: &TensorInfo) -> Parse<&[u8]> {
        let (per, bytes) = t.ty.block().ok_or_else(|| {
            format!(
                "tensor `{}` has ggml type {:?}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K",
                t.name, t.ty
            )
        })?;
        let n = t
            .checked_numel()
            .ok_or_else(|| format!("tensor `{}`: dimensions {:?} overflow", t.name, t.dims))?;
        if !n.is_multiple_of(per) {
            return Err(format!(
                "tensor `{}`: {n} elements is not a whole number of blocks of {per}",
                t.name
            ));
        }
        let past_end = || {
            format!(
                "tensor `{}` ({n} elements of {:?} at offset {}) runs past the end of the file ({} bytes; truncated?)",
                t.name,
                t.ty,
                t.offset,
                self.data.len()
            )
        };
        let len = (n / per).checked_mul(bytes).ok_or_else(past_end)?;
        let start = usize::try_from(t.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_start))
            .ok_or_else(past_end)?;
        let end = start.checked_add(len).ok_or_else(past_end)?;
        self.data.get(start..end).ok_or_else(past_end)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub(super) fn need(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| ModelError::file(&self.path, format!("metadata `{key}` is missing")))
    }

    pub(super) fn need_u64(&self, key: &str) -> Result<u64> {
        self.need(key)?.as_u64().ok_or_else(|| {
            ModelError::file(&self.path, format!("metadata `{key}` is not an integer"))
        })
    }

    /// The tensor dequantized to f32, in PyTorch shape.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Tensor> {
        let raw = self.raw(t).map_err(|m| ModelError::file(&self.path, m))?;
        let values = dequantize(t.ty, raw, t.numel())
            .map_err(|m| ModelError::file(&self.path, format!("tensor `{}`: {m}", t.name)))?;
        Tensor::from_slice(&values)
            .f_view(t.shape().as_slice())
            .map_err(|e| ModelError::file(&self.path, format!("tensor `{}`: {e}", t.name)))
    }
}
