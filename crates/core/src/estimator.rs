//! Estimators are pure functions of sequence log-prob tensors: they never see
//! logits or models, so each one is a small, testable loss function. What
//! data they read is a value, their [`DataPlan`].

use tch::Tensor;

use crate::plan::DataPlan;
use crate::Metrics;

/// Per-prompt groups of `n` samples: every tensor is `[P, n]`, f32 or f64.
pub struct GroupInputs {
    /// `log q_θ(y|x)` under the policy being trained (carries the gradient).
    pub policy_logp: Tensor,
    /// `log Q(y|x)` under the exact distribution the samples were drawn from.
    pub proposal_logp: Tensor,
    /// `log p(y|x)` under the prior / reference policy.
    pub prior_logp: Tensor,
    /// `log p(G = 1 | x, y)` from the goodness model.
    pub log_goodness: Tensor,
    /// Raw reward-model scores (ranking-based estimators use these).
    pub reward: Tensor,
    /// Completion lengths in tokens (for length normalisation).
    pub lengths: Tensor,
    /// `log q_θ(y_ref|x)` `[P]` of each prompt's reference (gold / SFT) output,
    /// when the estimator's plan asks for it ([`DataPlan::reference_logp`]).
    pub reference_policy_logp: Option<Tensor>,
}

/// An estimator: the data it trains on, declared once, and a pure loss over
/// that data. The training loop reads nothing else from it.
pub trait Estimator: Send + Sync {
    /// What each step's [`GroupInputs`] hold: how many candidates per prompt,
    /// from which distribution, which subset the loss reads, whether it needs
    /// the reference outputs.
    fn plan(&self) -> DataPlan;

    /// Scalar loss to minimise (mean over prompts) and metrics for logging.
    fn loss(&self, inputs: &GroupInputs) -> (Tensor, Metrics);

    /// [`Estimator::loss`] as the means it adds up, each with how many terms
    /// it averages in `inputs`. Data-parallel ranks weigh each mean by their
    /// share of its terms over the whole step, which gives the single
    /// process's loss whatever each rank's count. Default: one mean over the
    /// prompts. An estimator that averages over something else (the valid
    /// pairs of the step, say) overrides it.
    fn loss_means(&self, inputs: &GroupInputs) -> (Means, Metrics) {
        let (loss, metrics) = self.loss(inputs);
        let prompts = inputs.reward.size()[0] as f64;
        (Means::new().add(loss, prompts), metrics)
    }
}

/// A loss as a sum of means, each with the number of terms it averages.
#[derive(Default)]
pub struct Means(Vec<(Tensor, f64)>);

impl Means {
    pub fn new() -> Means {
        Means::default()
    }

    /// Adds `mean` (a scalar, carrying the gradient, already weighted as
    /// the loss weighs it), an average over `count` terms (0 when there
    /// were none: then `mean` is 0 too).
    pub fn add(mut self, mean: Tensor, count: f64) -> Means {
        self.0.push((mean, count));
        self
    }

    /// Each mean's count of terms.
    pub fn counts(&self) -> Vec<f64> {
        self.0.iter().map(|(_, c)| *c).collect()
    }

    /// The loss: the means added up, in order.
    pub fn total(&self) -> Tensor {
        let mut means = self.0.iter().map(|(m, _)| m);
        let first = means
            .next()
            .expect("a loss has at least one mean")
            .shallow_clone();
        means.fold(first, |acc, m| acc + m)
    }

    /// This part's share of the loss over the whole: each mean times its
    /// count over `totals` (the counts of every part, summed), so that the
    /// parts' shares add up to the loss of all their terms together.
    pub fn share_of(&self, totals: &[f64]) -> Tensor {
        assert_eq!(totals.len(), self.0.len(), "one total per mean");
        let mut parts = self
            .0
            .iter()
            .zip(totals)
            .map(|((m, c), t)| m * (if *t > 0.0 { c / t } else { 0.0 }));
        let first = parts.next().expect("a loss has at least one mean");
        parts.fold(first, |acc, m| acc + m)
    }
}

/// Which reward-ranked pairs to build from each prompt's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairs {
    /// One pair per prompt: highest- against lowest-reward sample.
    BestVsWorst,
    /// Every ordered pair with distinct rewards.
    All,
}

/// Reward-ranked pairs over `[P, n]` groups, as masks for pairwise losses.
///
/// Returns `valid` `[P, n, n]` (1 where sample i is chosen over sample j) so a
/// pairwise loss `f(x_i, x_j)` evaluated on `x.unsqueeze(2), x.unsqueeze(1)`
/// is averaged as `(f · valid).sum() / valid.sum()`.
pub fn pair_mask(reward: &Tensor, pairs: Pairs) -> Tensor {
    let reward = reward.detach();
    let kind = reward.kind();
    let better = reward.unsqueeze(2).gt_tensor(&reward.unsqueeze(1)); // [P, n, n]
    match pairs {
        Pairs::All => better.to_kind(kind),
        Pairs::BestVsWorst => {
            let n = reward.size()[1];
            let best = reward.argmax(-1, false).one_hot(n).unsqueeze(2); // [P, n, 1]
            let worst = reward.argmin(-1, false).one_hot(n).unsqueeze(1); // [P, 1, n]
            (best * worst).to_kind(kind) * better.to_kind(kind)
        }
    }
}

/// Mean of a pairwise quantity `[P, n, n]` over the pairs in `valid`.
pub fn pair_mean(values: &Tensor, valid: &Tensor) -> Tensor {
    let kind = values.kind();
    (values * valid).sum(kind) / valid.sum(kind).clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A loss shaped like SLiC-HF's: a mean over the valid pairs of `rows`
    /// plus `0.3 ·` a mean over their prompts.
    fn means(x: &Tensor, reward: &Tensor, rows: std::ops::Range<i64>) -> Means {
        let (first, len) = (rows.start, rows.end - rows.start);
        let (x, reward) = (x.narrow(0, first, len), reward.narrow(0, first, len)); // [p, 3]
        let valid = pair_mask(&reward, Pairs::All); // [p, 3, 3]
        let hinge = (x.unsqueeze(1) - x.unsqueeze(2) + 0.5).clamp_min(0.0); // [p, 3, 3]
        let pairs = valid.sum(Kind::Double).double_value(&[]);
        let nll = (x
            .sum_dim_intlist([-1].as_slice(), false, None)
            .mean(Kind::Double))
            * 0.3;
        Means::new()
            .add(pair_mean(&hinge, &valid), pairs)
            .add(nll, len as f64)
    }

    /// Parts of a step with unequal shares of its pairs (3 of 8 in the
    /// first prompt, 5 in the other three): their shares' losses and
    /// gradients add up to the whole step's. Weighing each part's loss by
    /// its share of the prompts instead would not.
    #[test]
    fn shares_of_the_means_add_up_to_the_whole_steps_loss() {
        tch::manual_seed(3);
        let x = Tensor::randn([4, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let reward =
            Tensor::from_slice(&[0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 5.0, 3.0, 2.0, 1.0])
                .view([4, 3]);
        let grad_of = |loss: Tensor| {
            let g = Tensor::run_backward(&[loss], &[&x], false, false);
            g[0].shallow_clone()
        };
        let whole = means(&x, &reward, 0..4);
        assert_eq!(whole.counts(), vec![8.0, 4.0]);
        let (want, want_grad) = (whole.total().double_value(&[]), grad_of(whole.total()));

        let parts = [means(&x, &reward, 0..1), means(&x, &reward, 1..4)];
        let totals: Vec<f64> = (0..2)
            .map(|k| parts.iter().map(|p| p.counts()[k]).sum())
            .collect();
        let shares: Vec<Tensor> = parts.iter().map(|p| p.share_of(&totals)).collect();
        let got: f64 = shares.iter().map(|s| s.double_value(&[])).sum();
        let got_grad = shares
            .into_iter()
            .map(grad_of)
            .reduce(|a, b| a + b)
            .unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(got_grad.allclose(&want_grad, 1e-12, 1e-12, false));

        // By prompts (¼ and ¾) the parts' pair means would weigh wrongly.
        let by_prompts =
            parts[0].total().double_value(&[]) * 0.25 + parts[1].total().double_value(&[]) * 0.75;
        assert!((by_prompts - want).abs() > 1e-3, "{by_prompts} vs {want}");
    }

    #[test]
    fn a_single_part_is_the_whole() {
        let x = Tensor::from_slice(&[0.5f64, -1.0, 2.0]).view([1, 3]);
        let reward = Tensor::from_slice(&[1.0f64, 0.0, 2.0]).view([1, 3]);
        let m = means(&x, &reward, 0..1);
        let own = m.counts();
        assert_eq!(
            m.share_of(&own).double_value(&[]),
            m.total().double_value(&[])
        );
    }
}
