//! Finding and reading checkpoint tensors (safetensors only), and copying them
//! into a `VarStore` whose variable names equal the checkpoint keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

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
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            ModelError::file(
                path,
                format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
            )
        })?;
        let index = self.origins.len();
        self.origins.push(path.to_path_buf());
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
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| ModelError::file(path, format!("tensor `{name}`: {e}")))?;
            self.tensors.insert(name, (t, index));
        }
        Ok(())
    }

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
    /// `bert.`). Extra checkpoint tensors are ignored; a missing one or a shape
    /// mismatch is an error naming the file.
    pub fn load_into(&self, vs: &nn::VarStore, prefixes: &[&str]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let candidates = std::iter::once(name.clone()).chain(prefixes.iter().flat_map(|p| {
                let stripped = name.strip_prefix(p).map(str::to_string);
                stripped.into_iter().chain([format!("{p}{name}")])
            }));
            let found = candidates
                .filter_map(|c| self.tensors.get(&c))
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
            let (src, file) = found;
            if src.size() != var.size() {
                return Err(ModelError::file(
                    &self.origins[*file],
                    format!(
                        "tensor `{name}` has shape {:?}, config.json implies {:?}",
                        src.size(),
                        var.size()
                    ),
                ));
            }
            var.f_copy_(&src.to_kind(var.kind()))
                .map_err(|e| ModelError::file(&self.origins[*file], format!("`{name}`: {e}")))?;
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
