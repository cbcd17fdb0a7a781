//! Finding and reading checkpoint tensors (safetensors only), and copying them
//! into a `VarStore` whose variable names equal the checkpoint keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::check::Budget;
use crate::error::{ModelError, Result};

/// Floating-point type the parameters are held in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
        }
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            "f16" | "float16" => Ok(DType::F16),
            _ => Err(format!("unknown dtype `{s}`; use f32, bf16 or f16")),
        }
    }
}

/// Named tensors from one or more files; `origin` names the file each came from.
#[derive(Default)]
pub struct Weights {
    tensors: HashMap<String, (Tensor, usize)>,
    origins: Vec<PathBuf>,
}

impl Weights {
    /// Tensors already in memory (e.g. dequantized from GGUF); `origin` is the
    /// file they came from, for error messages.
    pub fn from_tensors(origin: &Path, tensors: Vec<(String, Tensor)>) -> Weights {
        Weights {
            tensors: tensors.into_iter().map(|(n, t)| (n, (t, 0))).collect(),
            origins: vec![origin.to_path_buf()],
        }
    }

    /// Reads every safetensors file of an HF model directory: `model.safetensors`,
    /// or the shards listed in `model.safetensors.index.json`. Pickle
    /// checkpoints (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) are refused.
    pub fn from_dir(dir: &Path) -> Result<Weights> {
        let mut w = Weights::default();
        for file in safetensors_files(dir)? {
            w.read_file(&file)?;
        }
        Ok(w)
    }

    fn read_file(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::file(path, e.to_string()))?;
        let index = self.origins.len();
        self.origins.push(path.to_path_buf());
        for (name, t) in read_safetensors(path, &bytes)? {
            if let Some((_, other)) = self.tensors.get(&name) {
                return Err(ModelError::file(
                    path,
                    format!(
                        "tensor `{name}` is also in {}",
                        self.origins[*other].display()
                    ),
                ));
            }
            self.tensors.insert(name, (t, index));
        }
        Ok(())
    }

    /// How many values these weights hold: no model that they can fill
    /// declares more parameters.
    pub fn budget(&self) -> Budget {
        let values = self.tensors.values().map(|(t, _)| t.numel() as u64).sum();
        Budget {
            values,
            source: self.origin(),
        }
    }
}

/// Largest safetensors header (the `safetensors` crate's own limit).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Checks a safetensors file's header before anything is read by it: the
/// 8-byte length within the file and [`MAX_SAFETENSORS_HEADER`], JSON that
/// maps each name to a known dtype, a shape whose element count does not
/// overflow, and offsets inside the data section that hold exactly that
/// many bytes. Returns the header's length. Errors say what is wrong, not
/// which file (the caller names it).
pub fn check_safetensors_header(bytes: &[u8]) -> std::result::Result<usize, String> {
    let Some(len) = bytes.get(..8) else {
        return Err(format!(
            "{} bytes: too short for the 8-byte header length",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let left = bytes.len() as u64 - 8;
    if n > MAX_SAFETENSORS_HEADER || n > left {
        return Err(format!(
            "header length {n} is over the {} bytes after it or the limit of {MAX_SAFETENSORS_HEADER}",
            left
        ));
    }
    let n = n as usize;
    let data_len = (left as usize) - n;
    let header =
        std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(header).map_err(|e| format!("header is not a JSON object: {e}"))?;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| format!("tensor `{name}`: {what}");
        let dtype = info["dtype"]
            .as_str()
            .ok_or_else(|| bad("no `dtype` string"))?;
        let size: u64 = match dtype {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
            "I16" | "U16" | "F16" | "BF16" => 2,
            "I32" | "U32" | "F32" => 4,
            "I64" | "U64" | "F64" => 8,
            other => return Err(bad(&format!("unknown dtype `{other}`"))),
        };
        let shape = info["shape"]
            .as_array()
            .ok_or_else(|| bad("no `shape` array"))?;
        let shape = shape
            .iter()
            .map(|d| {
                d.as_u64().filter(|&d| d <= i64::MAX as u64).ok_or_else(|| {
                    bad(&format!(
                        "dimension {d} is not an integer from 0 to {}",
                        i64::MAX
                    ))
                })
            })
            .collect::<std::result::Result<Vec<u64>, String>>()?;
        // The non-zero dims must multiply within i64 too: a zero elsewhere
        // hides an overflow that shape arithmetic (LibTorch's) still meets.
        let numel = shape
            .iter()
            .filter(|&&d| d > 0)
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(&format!("shape {shape:?} multiplies past {}", i64::MAX)))?;
        let numel = if shape.contains(&0) { 0 } else { numel };
        let offsets = info["data_offsets"]
            .as_array()
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("`data_offsets` is not two non-negative integers"))?;
        let (start, end) = offsets;
        if start > end || end > data_len as u64 {
            return Err(bad(&format!(
                "data_offsets [{start}, {end}] are not inside the {data_len}-byte data section (truncated?)"
            )));
        }
        let want = numel.checked_mul(size);
        if want != Some(end - start) {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype} needs {} bytes but data_offsets [{start}, {end}] hold {}",
                want.map_or_else(|| "too many".to_string(), |w| w.to_string()),
                end - start
            )));
        }
    }
    Ok(n)
}

/// The tensors of the safetensors file `path` whose bytes are `bytes`: the
/// header checked by [`check_safetensors_header`] first, then the tensors
/// copied out. Errors name `path`.
pub fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let invalid = |e: String| {
        ModelError::file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    };
    check_safetensors_header(bytes).map_err(invalid)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| invalid(format!("{e:?}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::F16 => Kind::Half,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::F64 => Kind::Double,
            safetensors::Dtype::I64 => Kind::Int64,
            safetensors::Dtype::I32 => Kind::Int,
            safetensors::Dtype::U8 => Kind::Uint8,
            safetensors::Dtype::BOOL => Kind::Bool,
            other => {
                return Err(ModelError::file(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        // Each dimension ≤ i64::MAX (checked above).
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| ModelError::file(path, format!("tensor `{name}`: {e}")))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

impl Weights {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name).map(|(t, _)| t)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The file(s) these weights came from, for messages.
    pub fn origin(&self) -> String {
        match self.origins.as_slice() {
            [one] => one.display().to_string(),
            many => many
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn origin_path(&self) -> PathBuf {
        self.origins.first().cloned().unwrap_or_default()
    }

    /// Copies a tensor into every variable of `vs`, converting to the variable's
    /// dtype and device. A key may be found under one of `prefixes` stripped or
    /// added (GPT-2 and BERT checkpoints exist with and without `transformer.` /
    /// `bert.`). Errors name the file and tensor:
    ///
    /// - a checkpoint tensor in a layer the variables do not have (e.g.
    ///   `model.layers.5.…` for a config of 4 layers): the config drops
    ///   weights;
    /// - a missing tensor, or one whose shape differs (both shapes named);
    /// - a weight whose dtype is not a float type, or with a NaN or infinite
    ///   value.
    ///
    /// Other extra checkpoint tensors are ignored (buffers such as
    /// `rotary_emb.inv_freq` or `attn.bias`, or another model's head).
    pub fn load_into(&self, vs: &nn::VarStore, prefixes: &[&str]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        self.check_layers(vars.iter().map(|(n, _)| n.as_str()), prefixes)?;
        for (name, mut var) in vars {
            let candidates = std::iter::once(name.clone()).chain(prefixes.iter().flat_map(|p| {
                let stripped = name.strip_prefix(p).map(str::to_string);
                stripped.into_iter().chain([format!("{p}{name}")])
            }));
            let found = candidates
                .filter_map(|c| self.tensors.get(&c).map(|t| (c, t)))
                .next()
                .ok_or_else(|| {
                    ModelError::file(
                        self.origin_path(),
                        format!(
                            "no tensor `{name}` in {} (is config.json right for this checkpoint?)",
                            self.origin()
                        ),
                    )
                })?;
            let (key, (src, file)) = found;
            let file = &self.origins[*file];
            if src.size() != var.size() {
                return Err(ModelError::file(
                    file,
                    format!(
                        "tensor `{name}` has shape {:?}, config.json implies {:?}",
                        src.size(),
                        var.size()
                    ),
                ));
            }
            if !src.is_floating_point() {
                return Err(ModelError::file(
                    file,
                    format!(
                        "tensor `{key}` has dtype {:?}; a weight must be a float tensor \
                         (F16, BF16, F32 or F64)",
                        src.kind()
                    ),
                ));
            }
            let torch = |e: tch::TchError| ModelError::file(file, format!("`{key}`: {e}"));
            let finite = src
                .f_isfinite()
                .and_then(|f| f.f_all())
                .and_then(|a| a.f_int64_value(&[]))
                .map_err(torch)?;
            if finite == 0 {
                let bad = src
                    .f_isfinite()
                    .and_then(|f| f.f_logical_not())
                    .and_then(|f| f.f_sum(Kind::Int64))
                    .and_then(|n| n.f_int64_value(&[]))
                    .map_err(torch)?;
                return Err(ModelError::file(
                    file,
                    format!("tensor `{key}` has {bad} NaN or infinite value(s)"),
                ));
            }
            var.f_copy_(&src.f_to_kind(var.kind()).map_err(torch)?)
                .map_err(torch)?;
        }
        Ok(())
    }

    /// Refuses checkpoint tensors of layers beyond those declared: for each
    /// numbered list among `vars` (the name up to its first numeric part,
    /// e.g. `model.layers` of `model.layers.3.mlp.up_proj.weight`), a
    /// checkpoint tensor (under a prefix variant) numbered at or past its
    /// length.
    fn check_layers<'a>(
        &self,
        vars: impl Iterator<Item = &'a str>,
        prefixes: &[&str],
    ) -> Result<()> {
        fn numbered(name: &str) -> Option<(&str, u64)> {
            let mut at = 0;
            for part in name.split('.') {
                if let Ok(i) = part.parse::<u64>() {
                    return (at > 0).then(|| (&name[..at - 1], i));
                }
                at += part.len() + 1;
            }
            None
        }
        let mut lists: HashMap<&str, u64> = HashMap::new();
        for (list, i) in vars.filter_map(numbered) {
            let n = lists.entry(list).or_default();
            *n = (*n).max(i.saturating_add(1));
        }
        if lists.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<&String> = self.tensors.keys().collect();
        keys.sort();
        for key in keys {
            let variants = std::iter::once(key.clone()).chain(prefixes.iter().flat_map(|p| {
                let stripped = key.strip_prefix(p).map(str::to_string);
                stripped.into_iter().chain([format!("{p}{key}")])
            }));
            for v in variants {
                let Some((list, i)) = numbered(&v) else {
                    continue;
                };
                if let Some(&n) = lists.get(list) {
                    if i >= n {
                        let file = &self.origins[self.tensors[key].1];
                        return Err(ModelError::file(
                            file,
                            format!(
                                "tensor `{key}` is in layer {i} of `{list}`, but the config \
                                 declares {n} layer(s): it would be left unused (is the \
                                 config's layer count right for this checkpoint?)"
                            ),
                        ));
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}

const PICKLE_EXTENSIONS: [&str; 4] = ["bin", "pt", "pth", "ckpt"];

/// The safetensors files of an HF model directory.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(ModelError::NotFound(dir.to_path_buf()));
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text =
            std::fs::read_to_string(&index).map_err(|e| ModelError::file(&index, e.to_string()))?;
        let parsed: Index = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&index, format!("bad index: {e}")))?;
        let mut files: Vec<String> = parsed.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        if let Some(bad) = files.iter().find(|f| {
            let p = Path::new(f.as_str());
            p.components().count() != 1 || p.file_name().is_none_or(|n| n != f.as_str())
        }) {
            return Err(ModelError::file(
                &index,
                format!("shard `{bad}` is not a file name in this directory"),
            ));
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(ModelError::file(
                missing,
                format!("shard listed in {} is missing", index.display()),
            ));
        }
        return Ok(files);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::file(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let safetensors: Vec<PathBuf> = entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .cloned()
        .collect();
    if !safetensors.is_empty() {
        return Ok(safetensors);
    }
    if let Some(pickle) = entries.iter().find(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e))
    }) {
        return Err(ModelError::Pickle(pickle.clone()));
    }
    Err(ModelError::file(
        dir,
        "no model.safetensors, model.safetensors.index.json or *.safetensors in this directory",
    ))
}
