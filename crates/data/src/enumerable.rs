//! A toy task whose output space is small enough to enumerate: prompt `x` is a
//! single token, completions are every sequence of `length` tokens over a
//! vocabulary of `vocab`. Exact posteriors and KLs are computable on it.

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::task::Prompt;
use align_core::{Plugin, PluginError, Task, TaskContext, TaskSpec};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumerableConfig {
    /// Number of prompts (each one token, so at most `vocab`).
    pub prompts: i64,
    /// Vocabulary size.
    pub vocab: i64,
    /// Completion length.
    pub length: i64,
}

struct EnumerableSpec(EnumerableConfig);

impl TaskSpec for EnumerableSpec {
    fn vocab_size(&self) -> Option<i64> {
        Some(self.0.vocab)
    }

    fn max_len(&self) -> Option<i64> {
        Some(1 + self.0.length)
    }

    fn build(&self, _ctx: &TaskContext) -> anyhow::Result<Box<dyn Task>> {
        let prompts = (0..self.0.prompts)
            .map(|p| Prompt {
                ids: vec![p],
                text: None,
            })
            .collect();
        Ok(Box::new(Enumerable {
            config: self.0.clone(),
            prompts,
        }))
    }
}

pub struct Enumerable {
    config: EnumerableConfig,
    prompts: Vec<Prompt>,
}

impl Task for Enumerable {
    fn vocab_size(&self) -> Option<i64> {
        Some(self.config.vocab)
    }

    fn train_prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    fn eval_prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    fn max_new_tokens(&self) -> i64 {
        self.config.length
    }

    fn completion_space(&self, device: Device) -> Option<Tensor> {
        let (v, l) = (self.config.vocab, self.config.length);
        let m = v.pow(l as u32);
        // Row i is i written in base V, most significant digit first.
        let i = Tensor::arange(m, (Kind::Int64, device)).unsqueeze(1); // [M, 1]
        let powers: Vec<i64> = (0..l).rev().map(|k| v.pow(k as u32)).collect();
        let powers = Tensor::from_slice(&powers).to_device(device).unsqueeze(0); // [1, L]
        Some(i.floor_divide(&powers).remainder(v)) // [M, L]
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn TaskSpec>, PluginError> {
    build_from_config(de, |c: &EnumerableConfig| {
        if c.vocab < 2 {
            return Err(PluginError::invalid("vocab", "must be ≥ 2"));
        }
        if c.length < 1 {
            return Err(PluginError::invalid("length", "must be ≥ 1"));
        }
        // Checked before `vocab^length` below, whose exponent is an i32.
        if c.length > 64 {
            return Err(PluginError::invalid(
                "length",
                format!(
                    "must be at most 64 (vocab^length must stay ≤ 1e6 to enumerate), got {}",
                    c.length
                ),
            ));
        }
        if c.prompts < 1 || c.prompts > c.vocab {
            return Err(PluginError::invalid(
                "prompts",
                format!("must be between 1 and vocab = {}", c.vocab),
            ));
        }
        if (c.vocab as f64).powi(c.length as i32) > 1e6 {
            return Err(PluginError::invalid(
                "length",
                "vocab^length must stay ≤ 1e6 to enumerate",
            ));
        }
        Ok(Box::new(EnumerableSpec(c.clone())) as Box<dyn TaskSpec>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "enumerable",
        description: "toy task: one-token prompts, every completion of fixed length enumerable (exact posteriors)",
        constructor: Constructor::Task(construct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_space_lists_every_sequence_once() {
        let t = EnumerableSpec(EnumerableConfig {
            prompts: 2,
            vocab: 3,
            length: 2,
        })
        .build(&TaskContext {
            seed: 0,
            codec: None,
        })
        .unwrap();
        let s = t.completion_space(Device::Cpu).unwrap();
        let rows: Vec<Vec<i64>> = (0..9)
            .map(|i| Vec::<i64>::try_from(s.get(i)).unwrap())
            .collect();
        assert_eq!(rows[0], vec![0, 0]);
        assert_eq!(rows[5], vec![1, 2]);
        assert_eq!(rows[8], vec![2, 2]);
    }
}
