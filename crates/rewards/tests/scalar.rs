//! Scalar-head reward models: parity with transformers on tiny
//! `*ForSequenceClassification` checkpoints (tests/fixtures/make_fixtures.py),
//! label/head mismatches, and training that learns and round-trips.

use std::path::{Path, PathBuf};

use align_rewards::scalar::{Expect, Pooling, ScalarRm};
use align_rewards::training::{accuracy, train, Examples, TrainSettings};
use tch::Device;

const TRANSFORMERS: &str = "5.24.0";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn one_label() -> Expect {
    Expect {
        num_labels: 1,
        label: None,
    }
}

fn texts(e: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(e["texts"].clone()).unwrap()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs().max(1.0);
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{what}[{i}]: {g} vs transformers {w}"
        );
    }
}

#[test]
fn llama_reward_model_matches_transformers_at_the_last_real_token() {
    let e = expected("tiny-llama-rm");
    assert_eq!(e["transformers"], TRANSFORMERS);
    let rm =
        ScalarRm::from_checkpoint(&fixture("tiny-llama-rm"), &one_label(), Device::Cpu).unwrap();
    let texts = texts(&e);
    let ids: Vec<Vec<i64>> = texts.iter().map(|t| rm.encode(t).unwrap()).collect();
    assert_eq!(serde_json::to_value(&ids).unwrap(), e["input_ids"]);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Batch 4 pads the shorter texts (right padding); batch 1 pads nothing.
    for batch in [4, 1] {
        let got = rm.score_texts(&refs, batch).unwrap();
        let want: Vec<f64> = e["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[0].as_f64().unwrap())
            .collect();
        assert_close(&got, &want, &format!("llama rm reward, batch {batch}"));
    }
}

#[test]
fn bert_reward_model_with_hf_pooler_matches_transformers() {
    let e = expected("tiny-bert-rm");
    assert_eq!(e["transformers"], TRANSFORMERS);
    let expect = Expect {
        num_labels: 2,
        label: None,
    };
    let rm = ScalarRm::from_checkpoint(&fixture("tiny-bert-rm"), &expect, Device::Cpu).unwrap();
    let texts = texts(&e);
    let ids: Vec<Vec<i64>> = texts.iter().map(|t| rm.encode(t).unwrap()).collect();
    assert_eq!(serde_json::to_value(&ids).unwrap(), e["input_ids"]);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = rm.score_texts(&refs, 4).unwrap();
    // Two labels: the reward is label 1's log-odds, logit₁ − logit₀.
    let want: Vec<f64> = e["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[1].as_f64().unwrap() - row[0].as_f64().unwrap())
        .collect();
    assert_close(&got, &want, "bert rm log-odds");
    // Choosing label 0 flips the sign.
    let expect0 = Expect {
        num_labels: 2,
        label: Some("LABEL_0".into()),
    };
    let rm0 = ScalarRm::from_checkpoint(&fixture("tiny-bert-rm"), &expect0, Device::Cpu).unwrap();
    let flipped: Vec<f64> = want.iter().map(|w| -w).collect();
    assert_close(&rm0.score_texts(&refs, 4).unwrap(), &flipped, "label 0");
}

#[test]
fn label_count_or_head_shape_mismatch_names_both() {
    let two = Expect {
        num_labels: 2,
        label: None,
    };
    let err = ScalarRm::from_checkpoint(&fixture("tiny-llama-rm"), &two, Device::Cpu)
        .err()
        .expect("1-label checkpoint, 2 labels asked")
        .to_string();
    assert!(
        err.contains("config.json declares 1 label(s)") && err.contains("num_labels = 2"),
        "{err}"
    );
    // Without labels in config.json the head's shape is checked.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("tiny-bert-rm")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let obj = config.as_object_mut().unwrap();
    obj.remove("id2label");
    obj.remove("label2id");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = ScalarRm::from_checkpoint(dir.path(), &one_label(), Device::Cpu)
        .err()
        .expect("2-row head, 1 label asked")
        .to_string();
    assert!(
        err.contains("head `classifier.weight` is [2, 32]")
            && err.contains("num_labels = 1")
            && err.contains("[1, 32]"),
        "{err}"
    );
    // A plain language model is not a reward model.
    let err = ScalarRm::from_checkpoint(&fixture("tiny-llama"), &one_label(), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a reward model"), "{err}");
}

/// Texts over the tiny WordPiece vocabulary; "good" marks the positive ones.
fn synthetic(n: usize, seed: usize) -> Vec<(String, i64)> {
    let filler = [
        "the", "quick", "brown", "fox", "jumps", "over", "dog", "hello", "there",
    ];
    (0..n)
        .map(|i| {
            let k = i * 7 + seed * 13;
            let words: Vec<&str> = (0..4).map(|j| filler[(k + j * 5) % filler.len()]).collect();
            let positive = (i + seed).is_multiple_of(2);
            let mark = if positive { "good" } else { "lazy" };
            let at = k % 4;
            let mut w = words.clone();
            w.insert(at, mark);
            (w.join(" "), positive as i64)
        })
        .collect()
}

fn settings() -> TrainSettings {
    TrainSettings {
        epochs: 8,
        batch_size: 8,
        lr: 3e-3,
        head_lr: None,
        weight_decay: 0.0,
        warmup: 0.0,
        freeze_backbone: false,
        max_examples: None,
        max_grad_norm: 1.0,
        seed: 0,
    }
}

#[test]
fn classifier_training_learns_and_round_trips_as_hf_directory() {
    let labels = vec!["positive".to_string()];
    let mut rm = ScalarRm::from_backbone(
        &fixture("tiny-bert-rm"),
        Some(Pooling::Mean),
        labels,
        Device::Cpu,
    )
    .unwrap();
    let (train_set, test_set) = (synthetic(64, 0), synthetic(32, 1));
    let before = accuracy(&rm, &Examples::Labelled(test_set.clone()), 16).unwrap();
    let reports = train(
        &mut rm,
        &Examples::Labelled(train_set.clone()),
        &Examples::Labelled(test_set.clone()),
        &settings(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let after = accuracy(&rm, &Examples::Labelled(test_set.clone()), 16).unwrap();
    assert!(
        after >= 0.95 && reports.last().unwrap().train_loss < reports[0].train_loss,
        "accuracy {before} → {after}, {reports:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    rm.save(&out, &Default::default()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["brain_rs_pooling"], "mean");
    assert_eq!(config["id2label"]["0"], "positive");
    let back = ScalarRm::from_checkpoint(&out, &one_label(), Device::Cpu).unwrap();
    let texts: Vec<&str> = test_set.iter().map(|(t, _)| t.as_str()).collect();
    let (a, b) = (
        rm.score_texts(&texts, 8).unwrap(),
        back.score_texts(&texts, 8).unwrap(),
    );
    assert_close(
        &b,
        &a.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        "reloaded",
    );
    // Saving again replaces the directory whole.
    back.save(&out, &Default::default()).unwrap();
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn bradley_terry_training_on_a_decoder_learns_the_preference() {
    let labels = vec!["reward".to_string()];
    let mut rm =
        ScalarRm::from_backbone(&fixture("tiny-llama"), None, labels, Device::Cpu).unwrap();
    let pairs = |n: usize, seed: usize| -> Vec<(String, String)> {
        let s = synthetic(2 * n, seed);
        let (pos, neg): (Vec<_>, Vec<_>) = s.into_iter().partition(|(_, l)| *l == 1);
        pos.into_iter().zip(neg).map(|(p, q)| (p.0, q.0)).collect()
    };
    let (train_pairs, test_pairs) = (pairs(48, 0), pairs(24, 1));
    train(
        &mut rm,
        &Examples::Pairs(train_pairs.clone()),
        &Examples::Pairs(test_pairs.clone()),
        &settings(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let acc = accuracy(&rm, &Examples::Pairs(test_pairs.clone()), 8).unwrap();
    assert!(acc >= 0.95, "held-out pairwise accuracy {acc}");
    let dir = tempfile::tempdir().unwrap();
    rm.save(dir.path().join("rm").as_path(), &Default::default())
        .unwrap();
    let back =
        ScalarRm::from_checkpoint(&dir.path().join("rm"), &one_label(), Device::Cpu).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("rm/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(
        accuracy(&back, &Examples::Pairs(test_pairs.clone()), 8).unwrap(),
        acc
    );
}

/// `head_lr` drives the head alone when the body's rate is negligible.
#[test]
fn head_learning_rate_is_its_own() {
    let mut rm = ScalarRm::from_backbone(
        &fixture("tiny-bert-rm"),
        Some(Pooling::Mean),
        vec!["positive".into()],
        Device::Cpu,
    )
    .unwrap();
    let body_before = rm.vs.variables()["bert.encoder.layer.0.attention.self.query.weight"].copy();
    let s = TrainSettings {
        lr: 1e-12,
        head_lr: Some(1e-2),
        epochs: 1,
        ..settings()
    };
    let data = synthetic(32, 0);
    train(
        &mut rm,
        &Examples::Labelled(data.clone()),
        &Examples::Labelled(data.clone()),
        &s,
        &mut |_, _, _| {},
    )
    .unwrap();
    let vars = rm.vs.variables();
    let body_change = (&vars["bert.encoder.layer.0.attention.self.query.weight"] - &body_before)
        .abs()
        .max()
        .double_value(&[]);
    let head = vars["classifier.weight"].abs().max().double_value(&[]);
    assert!(
        body_change < 1e-6 && head > 1e-3,
        "body moved {body_change}, head {head}"
    );
}
