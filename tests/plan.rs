//! A new estimator with an unusual data need is a plan, not a change to the
//! training loop: a throwaway estimator, defined here, trains on three prior
//! samples per prompt plus the prompt's gold reference as a fourth candidate,
//! and the unchanged loop (`runner::run`) feeds it exactly that, with each
//! candidate's goodness against the reference (bt-vs-reference).

use std::path::Path;

use align_core::manifest::Manifest;
use align_core::{Candidates, DataPlan, Distribution, Estimator, GroupInputs, Metrics};
use tch::{Kind, Tensor};

/// Maximises the gold candidate's log-likelihood (SFT on the references),
/// and reports what it was given, so the test can check the batcher's work.
struct GoldAmongPriorSamples;

impl Estimator for GoldAmongPriorSamples {
    fn plan(&self) -> DataPlan {
        DataPlan::of(vec![
            Candidates::Sample {
                from: Distribution::Prior,
                count: 3,
                sampling: None,
            },
            Candidates::Reference,
        ])
        .with_reference_logp()
    }

    fn loss(&self, g: &GroupInputs) -> (Tensor, Metrics) {
        let gold = g.policy_logp.select(1, 3); // [P]
        let loss = -gold.mean(Kind::Float);
        let max_abs = |t: Tensor| t.abs().max().double_value(&[]);
        let sampled = |t: &Tensor| t.narrow(1, 0, 3);
        let reference = g.reference_policy_logp.as_ref().expect("asked for");
        let mut m = Metrics::new();
        m.set("loss", loss.double_value(&[]));
        m.set("group_size", g.policy_logp.size()[1] as f64);
        // The fourth candidate is the reference output the plan also asked
        // the log-prob of: the same sequence.
        m.set("gold_gap", max_abs(gold.detach() - reference.detach()));
        // A fixed candidate has no sampling density.
        m.set("gold_proposal", max_abs(g.proposal_logp.select(1, 3)));
        // Plain samples from the prior: the sampler's density is the prior's.
        m.set(
            "prior_gap",
            max_abs(sampled(&g.proposal_logp) - sampled(&g.prior_logp).to_kind(Kind::Float)),
        );
        m.set(
            "sampled_lengths_min",
            sampled(&g.lengths).min().double_value(&[]),
        );
        // The manifest's goodness is bt-vs-reference (τ = 1): every candidate
        // is compared with the prompt's reference, here also candidate 4.
        let vs_reference = (&g.reward - g.reward.narrow(1, 3, 1)).log_sigmoid();
        m.set("goodness_gap", max_abs(&g.log_goodness - vs_reference));
        (loss, m)
    }
}

#[test]
fn an_estimator_with_an_unusual_data_need_is_a_plan() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let text = format!(
        r#"name = "plan"
seed = 5
device = "cpu"

[task.preference-file]
format = "hh-rlhf"
path = "{}"
split = {{ validation = 0.0, test = 0.0 }}
max_new_tokens = 4

[model.hf]
path = "{}"

[reward.lexicon]

[goodness.bt-vs-reference]

[train]
steps = 12
lr = 1e-2
prompts_per_step = 2

[[runs]]
name = "gold-among-prior-samples"
[runs.estimator.brain]
"#,
        fixtures.join("data/hh-rlhf-clean.jsonl.gz").display(),
        fixtures.join("tiny-llama").display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, text).unwrap();
    let mut manifest = Manifest::load(&path, &[]).unwrap();
    // The manifest names a registered estimator; the run trains this one.
    manifest.runs[0].estimator.value = Box::new(GoldAmongPriorSamples);
    runner::run(&manifest, &dir.path().join("out"), false).unwrap();

    let steps =
        std::fs::read_to_string(dir.path().join("out/steps/gold-among-prior-samples.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(steps.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 12);
    let value = |row: &csv::StringRecord, name: &str| -> f64 { row[column(name)].parse().unwrap() };
    for row in &rows {
        assert_eq!(value(row, "group_size"), 4.0);
        assert!(value(row, "gold_gap") < 1e-5, "{row:?}");
        assert_eq!(value(row, "gold_proposal"), 0.0);
        assert!(value(row, "prior_gap") < 1e-4, "{row:?}");
        assert!(value(row, "sampled_lengths_min") >= 1.0);
        assert!(value(row, "goodness_gap") < 1e-6, "{row:?}");
    }
    // And the loop trains it: the gold outputs become more likely.
    let first = value(&rows[0], "loss") + value(&rows[1], "loss");
    let last = value(&rows[10], "loss") + value(&rows[11], "loss");
    assert!(last < first, "gold NLL did not fall: {first} → {last}");
}
