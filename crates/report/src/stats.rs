//! Intervals for the tables: a bootstrap over prompts for per-completion
//! columns (win rates, rewards, log-ratios), a Student-t interval across
//! seeds, and distinct-n. Pure functions of what is on disk, so `runner
//! tables` recomputes exactly the numbers a run printed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bootstrap resamples per interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// The bootstrap's fixed seed: an interval is a function of the data alone.
const BOOTSTRAP_SEED: u64 = 0x5eed_b007;

/// A mean with its 95% interval and standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Standard error of the mean (over prompts, or across seeds).
    pub se: f64,
    /// How many units (prompts or seeds) it rests on.
    pub n: usize,
}

/// The mean of `values` with a 95% percentile-bootstrap interval that
/// resamples whole prompts (`prompt[i]` is value `i`'s prompt), so the
/// completions of one prompt move together (a cluster bootstrap: paired over
/// prompts when two runs are judged on the same prompts). The standard error
/// is the clustered one, √(Σ_p (S_p − m·n_p)²) / N.
pub fn bootstrap_over_prompts(values: &[f64], prompt: &[usize]) -> Estimate {
    assert_eq!(values.len(), prompt.len(), "one prompt per value");
    let n_total = values.len();
    if n_total == 0 {
        return Estimate {
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            se: f64::NAN,
            n: 0,
        };
    }
    // Per-prompt sums and counts, in order of first appearance.
    let mut ids: Vec<usize> = Vec::new();
    let mut sums: Vec<f64> = Vec::new();
    let mut counts: Vec<f64> = Vec::new();
    for (&v, &p) in values.iter().zip(prompt) {
        let slot = match ids.iter().position(|&q| q == p) {
            Some(s) => s,
            None => {
                ids.push(p);
                sums.push(0.0);
                counts.push(0.0);
                ids.len() - 1
            }
        };
        sums[slot] += v;
        counts[slot] += 1.0;
    }
    let total: f64 = sums.iter().sum();
    let mean = total / n_total as f64;
    let clusters = ids.len();
    let se = (sums
        .iter()
        .zip(&counts)
        .map(|(s, c)| (s - mean * c).powi(2))
        .sum::<f64>())
    .sqrt()
        / n_total as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(BOOTSTRAP_SEED);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let (mut s, mut c) = (0.0, 0.0);
            for _ in 0..clusters {
                let k = rng.random_range(0..clusters);
                s += sums[k];
                c += counts[k];
            }
            s / c
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Estimate {
        mean,
        lo: quantile(&means, 0.025),
        hi: quantile(&means, 0.975),
        se,
        n: clusters,
    }
}

/// Linear-interpolated quantile of sorted `xs`.
fn quantile(xs: &[f64], q: f64) -> f64 {
    let pos = q * (xs.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    if i + 1 < xs.len() {
        xs[i] + frac * (xs[i + 1] - xs[i])
    } else {
        xs[i]
    }
}

/// The mean across seeds with a 95% Student-t interval (mean ± t·s/√S); one
/// seed gives a zero-width interval with `se = NaN`.
pub fn across_seeds(values: &[f64]) -> Estimate {
    let s = values.len();
    let mean = values.iter().sum::<f64>() / s as f64;
    if s < 2 {
        return Estimate {
            mean,
            lo: mean,
            hi: mean,
            se: f64::NAN,
            n: s,
        };
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (s - 1) as f64;
    let se = (var / s as f64).sqrt();
    let half = student_t_975(s - 1) * se;
    Estimate {
        mean,
        lo: mean - half,
        hi: mean + half,
        se,
        n: s,
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom.
fn student_t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => TABLE[d - 1],
        _ => 1.960,
    }
}

/// Distinct-n: unique n-grams over all n-grams of whitespace-separated words
/// across `texts` (Li et al., 2016); 0 when there are none.
pub fn distinct_n<'a>(texts: impl IntoIterator<Item = &'a str>, n: usize) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0usize;
    for t in texts {
        let words: Vec<&str> = t.split_whitespace().collect();
        for g in words.windows(n) {
            total += 1;
            seen.insert(g.join(" "));
        }
    }
    if total == 0 {
        0.0
    } else {
        seen.len() as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_covers_the_mean_and_clusters_prompts() {
        // Two completions per prompt, perfectly correlated within a prompt.
        let values: Vec<f64> = (0..200).map(|i| ((i / 2) % 2) as f64).collect();
        let prompts: Vec<usize> = (0..200).map(|i| i / 2).collect();
        let e = bootstrap_over_prompts(&values, &prompts);
        assert_eq!(e.mean, 0.5);
        assert_eq!(e.n, 100);
        assert!(e.lo < 0.5 && e.hi > 0.5, "{e:?}");
        // 100 clusters of a Bernoulli(½): se = 0.05, interval ≈ ±0.098.
        assert!((e.se - 0.05).abs() < 1e-12, "{}", e.se);
        assert!(((e.hi - e.lo) / 2.0 - 0.098).abs() < 0.015, "{e:?}");
        // Same data, same interval (fixed bootstrap seed).
        assert_eq!(e, bootstrap_over_prompts(&values, &prompts));
        // Treating each completion as its own prompt narrows the interval.
        let own: Vec<usize> = (0..200).collect();
        let f = bootstrap_over_prompts(&values, &own);
        assert!(f.hi - f.lo < e.hi - e.lo, "{f:?} vs {e:?}");
    }

    #[test]
    fn seeds_use_student_t() {
        let e = across_seeds(&[1.0, 2.0, 3.0]);
        assert_eq!(e.mean, 2.0);
        let half = 4.303 * (1.0f64 / 3.0).sqrt();
        assert!((e.hi - 2.0 - half).abs() < 1e-12 && (2.0 - e.lo - half).abs() < 1e-12);
        let one = across_seeds(&[0.25]);
        assert_eq!((one.lo, one.hi), (0.25, 0.25));
    }

    #[test]
    fn distinct_n_counts_unique_ngrams() {
        assert_eq!(distinct_n(["a b a b"], 1), 0.5);
        assert_eq!(distinct_n(["a b a b"], 2), 2.0 / 3.0);
        assert_eq!(distinct_n(["a", ""], 2), 0.0);
    }
}
