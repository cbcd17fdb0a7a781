//! Sample-based evaluation on held-out prompts: mean reward of the policy's
//! completions, win rate against the gold (reference) completion judged by the
//! reward model, completion length, and a Monte-Carlo KL(policy‖prior).

use align_core::logprob::policy_logprobs;
use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::sampling::sample;
use align_core::{
    EvalContext, Evaluator, Metrics, Plugin, PluginError, Policy, SampleBatch, SamplingConfig,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardStatsConfig {
    /// Completions sampled per held-out prompt.
    #[serde(default = "one")]
    pub samples: i64,
    /// Sampling temperature for evaluation (0: greedy).
    #[serde(default = "one_f")]
    pub temperature: f64,
    /// Prompts per sampling batch.
    #[serde(default = "sixteen")]
    pub batch_prompts: usize,
    #[serde(default)]
    pub seed: u64,
}

fn one() -> i64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn sixteen() -> usize {
    16
}

pub struct RewardStats(RewardStatsConfig);

/// Rewards `[B]` of `batch`, decoding it first when the policy has a tokenizer.
fn score(ctx: &EvalContext, batch: &mut SampleBatch) -> anyhow::Result<Tensor> {
    if let Some(codec) = ctx.codec {
        batch.decode_texts(codec)?;
    }
    Ok(ctx.reward.score(batch)?.to_kind(Kind::Double))
}

impl Evaluator for RewardStats {
    fn evaluate(&self, ctx: &EvalContext, policy: &dyn Policy) -> anyhow::Result<Metrics> {
        let c = &self.0;
        let prompts = ctx.task.eval_prompts();
        anyhow::ensure!(
            !prompts.is_empty(),
            "evaluator `reward-stats`: the task has no held-out prompts"
        );
        let references = ctx.task.eval_references();
        let config = SamplingConfig {
            temperature: c.temperature,
            top_k: None,
            top_p: None,
        };
        let _guard = tch::no_grad_guard();
        let (mut rewards, mut wins, mut lengths, mut kls) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (chunk, start) in prompts
            .chunks(c.batch_prompts)
            .zip((0..).step_by(c.batch_prompts))
        {
            let mut batch = sample(
                policy,
                chunk,
                c.samples,
                ctx.task.max_new_tokens(),
                ctx.task.eos_token(),
                &config,
                c.seed ^ start as u64,
            );
            let r = score(ctx, &mut batch)?; // [P·k]
            if let Some(refs) = references {
                let mut gold =
                    SampleBatch::from_pairs(chunk, &refs[start..start + chunk.len()], ctx.device);
                let r_gold = score(ctx, &mut gold)?.repeat_interleave_self_int(c.samples, 0, None); // [P·k]
                                                                                                    // A tie counts half, as a judge with no preference would.
                wins.push(
                    r.gt_tensor(&r_gold).to_kind(Kind::Double)
                        + r.eq_tensor(&r_gold).to_kind(Kind::Double) * 0.5,
                );
            }
            // Samples from the policy itself at temperature 1 estimate KL(q‖p).
            if c.temperature == 1.0 {
                kls.push(
                    batch.model_logp.to_kind(Kind::Double)
                        - policy_logprobs(ctx.prior, &batch).to_kind(Kind::Double),
                );
            }
            lengths.push(batch.lengths().to_kind(Kind::Double));
            rewards.push(r);
        }
        let mean = |xs: &[Tensor]| Tensor::cat(xs, 0).mean(Kind::Double).double_value(&[]);
        let mut m = Metrics::new();
        m.set("reward", mean(&rewards));
        if !wins.is_empty() {
            m.set("win_rate_vs_gold", mean(&wins));
        }
        if !kls.is_empty() {
            m.set("kl_policy_prior_mc", mean(&kls));
        }
        m.set("length", mean(&lengths));
        Ok(m)
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Evaluator>, PluginError> {
    build_from_config(de, |c: &RewardStatsConfig| {
        if c.samples < 1 {
            return Err(PluginError::invalid("samples", "must be ≥ 1"));
        }
        if !c.temperature.is_finite() || c.temperature < 0.0 {
            return Err(PluginError::invalid("temperature", "must be ≥ 0"));
        }
        if c.batch_prompts == 0 {
            return Err(PluginError::invalid("batch_prompts", "must be ≥ 1"));
        }
        Ok(Box::new(RewardStats(c.clone())) as Box<dyn Evaluator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "reward-stats",
        description: "held-out prompts: mean reward, win rate vs gold (reward-model judge), length, Monte-Carlo KL(policy‖prior)",
        constructor: Constructor::Evaluator(construct),
    }
}
