//! A tabular autoregressive policy: one free logit vector per prefix, so it can
//! represent any distribution over a small enumerable output space exactly.
//! The exact-posterior experiment uses it as prior, proposal and policy.

use align_core::manifest::InputPath;
use align_core::registry::{build_resolving, Built, ConfigDeserializer, Constructor};
use align_core::{ModelContext, ModelSpec, Plugin, PluginError, Policy};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabularConfig {
    /// Standard deviation of the initial logits (how peaked the prior is).
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Start from saved weights (a safetensors file with a `table` tensor)
    /// instead of a random table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InputPath>,
}

fn default_init_std() -> f64 {
    1.0
}

pub struct TabularSpec(TabularConfig);

impl ModelSpec for TabularSpec {
    fn build(&self, ctx: &ModelContext) -> anyhow::Result<Box<dyn Policy>> {
        let vocab = ctx.vocab_size.ok_or_else(|| {
            anyhow::anyhow!("the `tabular` model needs a task with a fixed vocabulary")
        })?;
        let max_len = ctx.max_len.ok_or_else(|| {
            anyhow::anyhow!("the `tabular` model needs a task with a maximum sequence length")
        })?;
        let model = Tabular::new(vocab, max_len, self.0.init_std, ctx)?;
        if let Some(init) = &self.0.init {
            model.load_table(init.path())?;
        }
        Ok(Box::new(model))
    }
}

pub struct Tabular {
    vs: nn::VarStore,
    /// `[S, V]`: row `offset[k] + code` holds the logits after a prefix of `k` tokens.
    table: Tensor,
    vocab: i64,
    max_len: i64,
    /// `offset[k]` = Σ_{j<k} V^j for prefix lengths 1..=max_len (index k-1).
    offsets: Vec<i64>,
}

impl Tabular {
    fn new(vocab: i64, max_len: i64, init_std: f64, ctx: &ModelContext) -> anyhow::Result<Self> {
        let mut offsets = Vec::with_capacity(max_len as usize);
        let mut total: i64 = 0;
        for k in 1..=max_len {
            offsets.push(total);
            total = vocab
                .checked_pow(k as u32)
                .and_then(|p| total.checked_add(p))
                .filter(|&t| t <= 50_000_000)
                .ok_or_else(|| anyhow::anyhow!("tabular model: {vocab}^{k} prefixes is too many; use a smaller vocabulary or length"))?;
        }
        let vs = nn::VarStore::new(ctx.device);
        let mut table = vs.root().zeros("table", &[total, vocab]);
        // Draw the initial table from a seeded generator of our own: the same
        // prior on every device, whatever else uses LibTorch's global one.
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let normal = Normal::new(0.0f32, init_std as f32)?;
        let values: Vec<f32> = (0..total * vocab)
            .map(|_| normal.sample(&mut rng))
            .collect();
        let init = Tensor::from_slice(&values).view([total, vocab]);
        tch::no_grad(|| table.copy_(&init));
        Ok(Tabular {
            vs,
            table,
            vocab,
            max_len,
            offsets,
        })
    }
}

impl Tabular {
    /// Replaces the table by the `table` tensor of a safetensors file (as
    /// [`Tabular::save_table`] writes it).
    fn load_table(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let tensors = Tensor::read_safetensors(path).map_err(|e| {
            anyhow::anyhow!("{}: not a readable safetensors file: {e}", path.display())
        })?;
        let (_, saved) = tensors
            .into_iter()
            .find(|(name, _)| name == "table")
            .ok_or_else(|| anyhow::anyhow!("{}: no `table` tensor", path.display()))?;
        anyhow::ensure!(
            saved.size() == self.table.size(),
            "{}: `table` is {:?}, this task's tabular model needs {:?} (vocab^1 + … + vocab^length rows × vocab)",
            path.display(),
            saved.size(),
            self.table.size()
        );
        let mut table = self.table.shallow_clone();
        tch::no_grad(|| table.copy_(&saved.to_kind(table.kind())));
        Ok(())
    }

    /// Writes the table as a safetensors file that `init` reads back.
    pub fn save_table(&self, path: &std::path::Path) -> anyhow::Result<()> {
        Tensor::write_safetensors(&[("table", self.table.to_device(Device::Cpu))], path)?;
        Ok(())
    }
}

impl Policy for Tabular {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids is [B, T]");
        assert!(
            t <= self.max_len,
            "tabular model: sequence of {t} tokens exceeds max_len {}",
            self.max_len
        );
        let device = input_ids.device();
        // Row of each position's prefix, skipping padding: code = Σ z_i V^(k-1-i).
        let mut code = Tensor::zeros([b], (Kind::Int64, device));
        let mut len = Tensor::zeros([b], (Kind::Int64, device));
        let offsets = Tensor::from_slice(&self.offsets).to_device(device);
        let mut rows = Vec::with_capacity(t as usize);
        for pos in 0..t {
            let real = attention_mask.select(1, pos).ne(0); // [B]
            let z = input_ids.select(1, pos);
            code = (&code * self.vocab + z).where_self(&real, &code);
            len = (&len + 1).where_self(&real, &len);
            // A row with no real token yet reads row 0; its logits are never used.
            let offset = offsets.index_select(0, &(&len - 1).clamp_min(0));
            rows.push(offset + &code);
        }
        let rows = Tensor::stack(&rows, 1); // [B, T]
        self.table
            .index_select(0, &rows.view([-1]))
            .view([b, t, self.vocab]) // [B, T, V]
    }

    fn vocab_size(&self) -> i64 {
        self.vocab
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn ModelSpec>, PluginError> {
    build_resolving(de, |c: &mut TabularConfig, base| {
        if let Some(init) = &mut c.init {
            base.resolve("init", init)?;
        }
        if !c.init_std.is_finite() || c.init_std < 0.0 {
            return Err(PluginError::invalid(
                "init_std",
                "must be a finite number ≥ 0",
            ));
        }
        Ok(Box::new(TabularSpec(c.clone())) as Box<dyn ModelSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "tabular",
        description: "tabular autoregressive policy (one logit vector per prefix) for enumerable toy tasks",
        constructor: Constructor::Model(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_map_to_distinct_rows_and_padding_is_skipped() {
        let ctx = ModelContext {
            device: tch::Device::Cpu,
            vocab_size: Some(3),
            max_len: Some(3),
            seed: 1,
        };
        let m = Tabular::new(3, 3, 1.0, &ctx).unwrap();
        // [1, 2] unpadded vs [pad, 1, 2] left-padded: same logits at the last position.
        let a = m.forward(
            &Tensor::from_slice(&[1i64, 2]).view([1, 2]),
            &Tensor::from_slice(&[1i64, 1]).view([1, 2]),
        );
        let b = m.forward(
            &Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]),
            &Tensor::from_slice(&[0i64, 1, 1]).view([1, 3]),
        );
        assert!(a.select(1, 1).allclose(&b.select(1, 2), 0.0, 0.0, false));
        // Different prefixes of the same length read different rows.
        let c = m.forward(
            &Tensor::from_slice(&[2i64, 1]).view([1, 2]),
            &Tensor::from_slice(&[1i64, 1]).view([1, 2]),
        );
        assert!(!a.select(1, 1).allclose(&c.select(1, 1), 0.0, 0.0, false));
    }

    /// `init` starts the model from a saved table: another seed's random
    /// table, saved and read back, gives that model's logits exactly.
    #[test]
    fn init_reads_a_saved_table() {
        let ctx = |seed| ModelContext {
            device: tch::Device::Cpu,
            vocab_size: Some(3),
            max_len: Some(2),
            seed,
        };
        let saved = Tabular::new(3, 2, 1.0, &ctx(5)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prior.safetensors");
        saved.save_table(&path).unwrap();
        let spec = TabularSpec(TabularConfig {
            init_std: 1.0,
            init: Some(InputPath::new(&path)),
        });
        let loaded = spec.build(&ctx(1)).unwrap();
        let fresh = TabularSpec(TabularConfig {
            init_std: 1.0,
            init: None,
        })
        .build(&ctx(1))
        .unwrap();
        let ids = Tensor::from_slice(&[1i64, 2]).view([1, 2]);
        let mask = ids.ones_like();
        let want = saved.forward(&ids, &mask);
        assert!(loaded.forward(&ids, &mask).allclose(&want, 0.0, 0.0, false));
        assert!(!fresh.forward(&ids, &mask).allclose(&want, 0.0, 0.0, false));

        // A table of the wrong shape is refused, naming the file.
        let other = Tabular::new(3, 3, 1.0, &ctx(5)).unwrap();
        other.save_table(&path).unwrap();
        let err = spec.build(&ctx(1)).err().unwrap().to_string();
        assert!(
            err.contains("prior.safetensors") && err.contains("needs"),
            "{err}"
        );
    }
}
