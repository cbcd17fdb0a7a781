//! Exact divergences to the reward-conditioned posterior on an enumerable task:
//! every completion is scored, so `posterior = p·G / Z` is computed exactly.

use align_core::logprob::policy_logprobs;
use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::{
    EvalContext, Evaluation, Evaluator, HeldOut, Metrics, Plugin, PluginError, Policy, SampleBatch,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactKlConfig {}

pub struct ExactKl;

/// Everything about the posterior that does not depend on the policy: `[P, M]`.
struct Exact {
    batch: SampleBatch,
    log_prior: Tensor,
    log_post: Tensor,
    reward: Tensor,
}

impl ExactKl {
    fn exact(&self, ctx: &EvalContext) -> anyhow::Result<Exact> {
        let space = ctx.task.completion_space(ctx.device).ok_or_else(|| {
            anyhow::anyhow!("evaluator `exact-kl` needs a task whose outputs can be enumerated (e.g. `enumerable`)")
        })?; // [M, L]
        let prompts = ctx.task.eval_prompts();
        let (p, m) = (prompts.len() as i64, space.size()[0]);
        let batch = SampleBatch::from_completions(prompts, &space, ctx.device);
        let _guard = tch::no_grad_guard();
        let log_prior = policy_logprobs(ctx.prior, &batch)
            .to_kind(Kind::Double)
            .view([p, m]);
        let reward = ctx.reward.score(&batch)?.to_kind(Kind::Double).view([p, m]);
        let log_g = ctx
            .goodness
            .log_goodness(&reward.view([-1]), None)?
            .view([p, m]);
        let log_post = (&log_prior + log_g).log_softmax(-1, Kind::Double); // [P, M]
        Ok(Exact {
            batch,
            log_prior,
            log_post,
            reward,
        })
    }
}

/// `KL(a ‖ b)` per row, from log-probabilities `[P, M]` → mean over rows.
fn kl(log_a: &Tensor, log_b: &Tensor) -> f64 {
    (log_a.exp() * (log_a - log_b))
        .sum_dim_intlist([-1].as_slice(), false, None)
        .mean(Kind::Double)
        .double_value(&[])
}

fn expectation(log_p: &Tensor, values: &Tensor) -> f64 {
    (log_p.exp() * values)
        .sum_dim_intlist([-1].as_slice(), false, None)
        .mean(Kind::Double)
        .double_value(&[])
}

impl Evaluator for ExactKl {
    fn needs_held_out(&self) -> bool {
        false // it sums over the whole output space instead
    }

    fn evaluate(
        &self,
        ctx: &EvalContext,
        policy: &dyn Policy,
        _: Option<&HeldOut>,
    ) -> anyhow::Result<Evaluation> {
        let e = self.exact(ctx)?;
        let _guard = tch::no_grad_guard();
        let log_q = policy_logprobs(policy, &e.batch)
            .to_kind(Kind::Double)
            .view_as(&e.log_post); // [P, M]
        let mass = log_q
            .logsumexp([-1].as_slice(), false)
            .abs()
            .max()
            .double_value(&[]);
        anyhow::ensure!(mass < 1e-4, "exact-kl: the policy's probabilities over the output space do not sum to 1 (|log Σ| = {mass})");
        let mut m = Metrics::new();
        m.set("kl_post_policy", kl(&e.log_post, &log_q));
        m.set("kl_policy_post", kl(&log_q, &e.log_post));
        m.set("kl_policy_prior", kl(&log_q, &e.log_prior));
        m.set("expected_reward", expectation(&log_q, &e.reward));
        Ok(Evaluation::from_metrics(m))
    }

    fn reference_rows(&self, ctx: &EvalContext) -> anyhow::Result<Vec<(String, Metrics)>> {
        let e = self.exact(ctx)?;
        let mut m = Metrics::new();
        m.set("kl_post_policy", 0.0);
        m.set("kl_policy_post", 0.0);
        m.set("kl_policy_prior", kl(&e.log_post, &e.log_prior));
        m.set("expected_reward", expectation(&e.log_post, &e.reward));
        Ok(vec![("posterior (exact)".to_string(), m)])
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Evaluator>, PluginError> {
    build_from_config(de, |_: &ExactKlConfig| {
        Ok(Box::new(ExactKl) as Box<dyn Evaluator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "exact-kl",
        description: "exact KL(posterior‖policy), KL(policy‖posterior), KL(policy‖prior) and expected reward on enumerable tasks",
        constructor: Constructor::Evaluator(construct),
    }
}
