//! Helpers shared by the models crate's integration tests.
#![allow(dead_code)]

pub mod gguf;

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

/// The device the parity tests run on: `BRAIN_RS_TEST_DEVICE=cuda` runs them
/// on the GPU (default: CPU).
pub fn device() -> Device {
    match std::env::var("BRAIN_RS_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// `tests/fixtures/NAME` at the workspace root.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The tensors of `tests/fixtures/NAME/expected.safetensors`.
pub fn expected(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("expected.safetensors"))
        .expect("fixture expected.safetensors")
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device())))
        .collect()
}

/// `tests/fixtures/NAME/expected.json`.
pub fn expected_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Asserts `got` ≈ `want` elementwise where `keep` (broadcast) is true:
/// |got − want| ≤ rtol·|want| + atol.
pub fn assert_close(got: &Tensor, want: &Tensor, keep: &Tensor, rtol: f64, atol: f64, what: &str) {
    let got = got.to_kind(Kind::Double).to_device(Device::Cpu);
    let want = want.to_kind(Kind::Double).to_device(Device::Cpu);
    let keep = keep.to_device(Device::Cpu);
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let keep = keep.broadcast_to(got.size().as_slice());
    let err = (&got - &want).abs();
    let bound = want.abs() * rtol + atol;
    let bad = err.gt_tensor(&bound).logical_and(&keep);
    let n_bad = bad.sum(Kind::Int64).int64_value(&[]);
    let worst = (err / want.abs().clamp_min(1e-12))
        .masked_fill(&keep.logical_not(), 0.0)
        .max()
        .double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert_eq!(
        n_bad, 0,
        "{what}: {n_bad} elements outside rtol {rtol} + atol {atol} (max relative error {worst:e}, max |want| {scale})"
    );
}

/// Copies the files of fixture directory `from` into `to` (created if missing).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A temporary copy of fixture directory `name`.
pub fn fixture_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), dir.path());
    dir
}

/// Rewrites the JSON file `path` through `edit`.
pub fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites `dir/model.safetensors` through `edit` (its tensors, sorted by name).
pub fn edit_weights(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let p = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&p).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &p).unwrap();
}

/// The PyTorch environment's Python (`BRAIN_RS_TORCH_VENV`, else set-up's
/// `~/.cache/brain-rs/torch-2.11.0`), when it can import every module of
/// `modules` (comma-separated, as `import` takes them).
pub fn torch_python(modules: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("BRAIN_RS_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/brain-rs/torch-2.11.0"))
        })?;
    let python = venv.join("bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}
