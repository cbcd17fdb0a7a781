//! A BERT encoder (e.g. all-MiniLM-L6-v2), for reward models that put a head
//! on a sentence encoder. Not a `Policy` (it is not autoregressive): it returns
//! hidden states `[B, T, H]` and mean-pooled sentence embeddings `[B, H]`.
//! Parameter paths equal HF's safetensors keys (with or without `bert.`).

use std::path::Path;

use serde::Deserialize;
use tch::{nn, Device, Kind, Tensor};

use crate::check::{
    dim, divides, finite, Budget, ParamCount, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS,
    MAX_POSITIONS, MAX_TYPE_VOCAB, MAX_VOCAB,
};
use crate::common::{attention, split_heads, Activation, LayerNorm, Linear};
use crate::error::{ModelError, Result};
use crate::hf::read_json;
use crate::weights::{DType, Weights};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "two")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl BertConfig {
    /// Checks every size against [`crate::check`]'s bounds (heads divide
    /// the hidden size); returns the parameter count [`Bert::new`] declares.
    pub fn validate(&self, path: &Path) -> Result<u64> {
        let h = dim(path, "hidden_size", self.hidden_size, MAX_HIDDEN)?;
        let heads = dim(
            path,
            "num_attention_heads",
            self.num_attention_heads,
            MAX_HEADS,
        )?;
        divides(path, "hidden_size", h, "num_attention_heads", heads)?;
        let inter = dim(
            path,
            "intermediate_size",
            self.intermediate_size,
            MAX_INTERMEDIATE,
        )?;
        let layers = dim(
            path,
            "num_hidden_layers",
            self.num_hidden_layers,
            MAX_LAYERS,
        )?;
        let vocab = dim(path, "vocab_size", self.vocab_size, MAX_VOCAB)?;
        let positions = dim(
            path,
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        let types = dim(
            path,
            "type_vocab_size",
            self.type_vocab_size,
            MAX_TYPE_VOCAB,
        )?;
        finite(path, "layer_norm_eps", self.layer_norm_eps, 0.0, false)?;
        let mut layer = ParamCount::default();
        for (input, output) in [(h, h), (h, h), (h, h), (h, h), (h, inter), (inter, h)] {
            layer.add(&[output, input]);
            layer.add(&[output]);
        }
        for _ in 0..4 {
            layer.add(&[h]); // two LayerNorms: weight and bias
        }
        let mut total = ParamCount::default();
        total.add_times(layer, layers);
        for rows in [vocab, positions, types] {
            total.add(&[rows, h]);
        }
        total.add(&[h]);
        total.add(&[h]);
        total.total(path)
    }

    /// Reads and checks `dir/config.json`: every size in bounds, and (when
    /// the directory has safetensors files) no more parameters than they
    /// can hold.
    pub fn load(dir: &Path) -> Result<(BertConfig, Activation)> {
        let config_path = dir.join("config.json");
        let cfg: BertConfig = read_json(&config_path)?;
        let params = cfg.validate(&config_path)?;
        if let Some(budget) = Budget::from_disk(dir) {
            budget.admit(&config_path, params)?;
        }
        if let Some(t) = cfg
            .position_embedding_type
            .as_deref()
            .filter(|t| *t != "absolute")
        {
            return Err(ModelError::file(
                &config_path,
                format!("position_embedding_type `{t}` is not supported (only `absolute`)"),
            ));
        }
        let act = Activation::from_hf(&cfg.hidden_act).ok_or_else(|| {
            ModelError::file(
                &config_path,
                format!("unsupported hidden_act `{}`", cfg.hidden_act),
            )
        })?;
        Ok((cfg, act))
    }
}

fn two() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
    head_dim: i64,
    act: Activation,
}

impl Bert {
    /// Loads `config.json` + safetensors from an HF directory: the encoder
    /// and the variable store that holds its parameters.
    pub fn from_dir(dir: &Path, dtype: DType, device: Device) -> Result<(nn::VarStore, Bert)> {
        let (cfg, act) = BertConfig::load(dir)?;
        let weights = Weights::from_dir(dir)?;
        weights.budget().admit(
            &dir.join("config.json"),
            cfg.validate(&dir.join("config.json"))?,
        )?;
        let mut vs = nn::VarStore::new(device);
        let bert = Bert::new(vs.root(), &cfg, act);
        weights.load_into(&vs, &["bert."])?;
        vs.set_kind(dtype.kind());
        Ok((vs, bert))
    }

    /// Declares every parameter under `root` (zeros; load weights afterwards).
    pub fn new(root: nn::Path, cfg: &BertConfig, act: Activation) -> Bert {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = root.sub("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = root.sub("encoder").sub("layer").sub(i);
                let a = p.sub("attention");
                Layer {
                    query: Linear::new(a.sub("self").sub("query"), h, h, true),
                    key: Linear::new(a.sub("self").sub("key"), h, h, true),
                    value: Linear::new(a.sub("self").sub("value"), h, h, true),
                    attn_out: Linear::new(a.sub("output").sub("dense"), h, h, true),
                    attn_norm: LayerNorm::new(a.sub("output").sub("LayerNorm"), h, eps),
                    intermediate: Linear::new(
                        p.sub("intermediate").sub("dense"),
                        h,
                        cfg.intermediate_size,
                        true,
                    ),
                    output: Linear::new(
                        p.sub("output").sub("dense"),
                        cfg.intermediate_size,
                        h,
                        true,
                    ),
                    out_norm: LayerNorm::new(p.sub("output").sub("LayerNorm"), h, eps),
                }
            })
            .collect();
        let word = e
            .sub("word_embeddings")
            .zeros("weight", &[cfg.vocab_size, h]);
        let position = e
            .sub("position_embeddings")
            .zeros("weight", &[cfg.max_position_embeddings, h]);
        let token_type = e
            .sub("token_type_embeddings")
            .zeros("weight", &[cfg.type_vocab_size, h]);
        let emb_norm = LayerNorm::new(e.sub("LayerNorm"), h, eps);
        Bert {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            act,
        }
    }

    /// The longest input the learned position table covers
    /// (`max_position_embeddings`).
    pub fn max_positions(&self) -> i64 {
        self.position.size()[0]
    }

    /// Last hidden states `[B, T, H]` for right-padded `input_ids` `[B, T]`.
    ///
    /// # Panics
    ///
    /// When `T` is over [`Bert::max_positions`] (this signature has no
    /// error path: callers truncate to it first), with a message naming both.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids is [B, T]");
        let capacity = self.max_positions();
        assert!(
            t <= capacity,
            "BERT forward: {t} tokens but the model has {capacity} positions \
             (max_position_embeddings); truncate inputs to {capacity} tokens"
        );
        let device = input_ids.device();
        let positions = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
        let types = match token_type_ids {
            Some(tt) => tt.shallow_clone(),
            None => input_ids.zeros_like(),
        };
        let x = Tensor::embedding(&self.word, input_ids, -1, false, false)
            + Tensor::embedding(&self.position, &positions, -1, false, false)
            + Tensor::embedding(&self.token_type, &types, -1, false, false);
        let mut x = self.emb_norm.forward(&x);
        let mask = attention_mask.ne(0).view([b, 1, 1, t]);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for l in &self.layers {
            let q = split_heads(&l.query.forward(&x), self.heads);
            let k = split_heads(&l.key.forward(&x), self.heads);
            let v = split_heads(&l.value.forward(&x), self.heads);
            let a = l.attn_out.forward(&attention(&q, &k, &v, &mask, scale));
            x = l.attn_norm.forward(&(a + &x));
            let m = l
                .output
                .forward(&self.act.apply(&l.intermediate.forward(&x)));
            x = l.out_norm.forward(&(m + &x));
        }
        x
    }

    /// Mean of the hidden states over real tokens → `[B, H]` (sentence-transformers pooling).
    pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
        let m = attention_mask.to_kind(hidden.kind()).unsqueeze(-1); // [B, T, 1]
        (hidden * &m).sum_dim_intlist([1].as_slice(), false, None)
            / m.sum_dim_intlist([1].as_slice(), false, None)
                .clamp_min(1e-9)
    }
}
