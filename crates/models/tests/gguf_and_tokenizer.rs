//! GGUF import against gguf-py (0.19.0) and transformers 5.24.0: the tiny Llama
//! of `tests/fixtures/tiny-llama-gguf` (Q8_0/Q4_0/Q4_1/F16/F32 tensors, Q/K
//! rows permuted as llama.cpp's converter does) must give the logits of the
//! model rebuilt from gguf-py's dequantization; its tokenizer is rebuilt from
//! the GGUF metadata and must tokenise like the original `tokenizer.json`.

mod common;

use align_models::gguf::{self, dequantize, GgmlType, GgufFile};
use align_models::tokenizer::{ChatMessage, TextTokenizer};
use align_models::{load, DType};
use common::{assert_close, expected, expected_json, fixture};
use tch::{Device, Tensor};

fn gguf_path() -> std::path::PathBuf {
    fixture("tiny-llama-gguf").join("tiny-llama.gguf")
}

#[test]
fn gguf_reader_sees_metadata_and_tensor_types() {
    let f = GgufFile::read(&gguf_path()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    let types: std::collections::BTreeSet<String> =
        f.tensors.iter().map(|t| format!("{:?}", t.ty)).collect();
    for t in ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"] {
        assert!(types.contains(t), "fixture lacks {t}: {types:?}");
    }
}

#[test]
fn imported_gguf_matches_dequantized_reference() {
    let e = expected("tiny-llama-gguf");
    let lm = load(&gguf_path(), DType::F32, Device::Cpu).unwrap();
    let logits = tch::no_grad(|| lm.policy.forward(&e["input_ids"], &e["attention_mask"]));
    let real = e["attention_mask"].ne(0).unsqueeze(-1);
    assert_close(&logits, &e["logits"], &real, 1e-4, 1e-5, "gguf logits");
}

#[test]
fn gguf_writes_out_an_hf_directory_that_loads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let imported = gguf::import(&gguf_path()).unwrap();
    imported.write_hf_dir(dir.path()).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} not written");
    }
    let e = expected("tiny-llama-gguf");
    let lm = load(dir.path(), DType::F32, Device::Cpu).unwrap();
    let logits = tch::no_grad(|| lm.policy.forward(&e["input_ids"], &e["attention_mask"]));
    let real = e["attention_mask"].ne(0).unsqueeze(-1);
    assert_close(&logits, &e["logits"], &real, 1e-4, 1e-5, "exported logits");
    let tok = lm.tokenizer.expect("tokenizer written");
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert!(tok.chat_template().is_some());
}

#[test]
fn gguf_tokenizer_tokenises_like_the_original() {
    let meta = expected_json("tiny-llama-gguf");
    let text = meta["text"].as_str().unwrap();
    let want = Vec::<i64>::try_from(&expected("tiny-llama-gguf")["text_ids"]).unwrap();
    let lm = load(&gguf_path(), DType::F32, Device::Cpu).unwrap();
    let from_gguf = lm.tokenizer.unwrap();
    assert_eq!(from_gguf.encode(text, false).unwrap(), want);
    assert_eq!(from_gguf.decode(&want, false).unwrap(), text);
    let original = TextTokenizer::from_dir(&fixture("tiny-llama"), 300).unwrap();
    assert_eq!(original.encode(text, false).unwrap(), want);
    // Special tokens are single ids.
    let im_end = from_gguf.encode("<|im_end|>", false).unwrap();
    assert_eq!(im_end.len(), 1);
    assert_eq!(Some(im_end[0]), from_gguf.eos_token_id());
}

#[test]
fn chat_template_renders_like_transformers() {
    let meta = expected_json("tiny-llama");
    let chat = &meta["chat"];
    let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let tok = TextTokenizer::from_dir(&fixture("tiny-llama"), 300).unwrap();
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        chat["rendered"].as_str().unwrap()
    );
    // The GGUF copy carries the same template.
    let lm = load(&gguf_path(), DType::F32, Device::Cpu).unwrap();
    assert_eq!(
        lm.tokenizer
            .unwrap()
            .apply_chat_template(&messages, true)
            .unwrap(),
        chat["rendered"].as_str().unwrap()
    );
}

#[test]
fn prompt_special_tokens_come_from_the_post_processor() {
    // tiny-llama-tied's tokenizer prepends BOS (<|endoftext|> = 0) like Llama-2.
    let tok = TextTokenizer::from_dir(&fixture("tiny-llama-tied"), 300).unwrap();
    let with = tok.encode("Hello world", true).unwrap();
    let without = tok.encode("Hello world", false).unwrap();
    assert_eq!(with[0], 0);
    assert_eq!(&with[1..], without.as_slice());
    assert_eq!(tok.bos_token(), Some("<|endoftext|>"));
    // eos from generation_config.json
    assert_eq!(tok.eos_token_id(), Some(2));
}

#[test]
fn dequantize_known_blocks() {
    // Q8_0: d = 0.5 (f16 0x3800), q = -2, 3, 0…
    let mut q8 = vec![0x00u8, 0x38];
    q8.extend([(-2i8) as u8, 3]);
    q8.extend(std::iter::repeat_n(0u8, 30));
    let v = dequantize(GgmlType::Q8_0, &q8, 32).unwrap();
    assert_eq!(&v[..3], &[-1.0, 1.5, 0.0]);
    // Q4_0: d = 2, byte 0x9F → low nibble 15 → (15-8)·2 = 14 at j, high 9 → 2 at j+16.
    let mut q4 = vec![0x00u8, 0x40, 0x9f];
    q4.extend(std::iter::repeat_n(0x88u8, 15));
    let v = dequantize(GgmlType::Q4_0, &q4, 32).unwrap();
    assert_eq!((v[0], v[16], v[1]), (14.0, 2.0, 0.0));
    // Q4_1: d = 1, m = -0.5, byte 0x21 → 0.5 at j, 1.5 at j+16.
    let mut q41 = vec![0x00u8, 0x3c, 0x00, 0xb8, 0x21];
    q41.extend(std::iter::repeat_n(0u8, 15));
    let v = dequantize(GgmlType::Q4_1, &q41, 32).unwrap();
    assert_eq!((v[0], v[16], v[1]), (0.5, 1.5, -0.5));
}

/// Q5_0, Q5_1 and the K-quants on random blocks (`tests/fixtures/gguf-quants`)
/// decode exactly as gguf-py decodes them.
#[test]
fn dequantize_matches_gguf_py_on_random_blocks() {
    assert_eq!(expected_json("gguf-quants")["gguf"], "0.19.0");
    let blocks = expected("gguf-quants");
    let types = [
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q2_K", GgmlType::Q2K),
        ("Q3_K", GgmlType::Q3K),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let raw = Vec::<u8>::try_from(&blocks[&format!("{name}.raw")]).unwrap();
        let want = Vec::<f32>::try_from(&blocks[&format!("{name}.values")]).unwrap();
        let got = dequantize(ty, &raw, want.len()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "{name}: value {i} = {g}, gguf-py {w}"
            );
        }
    }
}

#[test]
fn unpermute_inverts_llama_cpp_permutation() {
    // llama.cpp: w.reshape(h, 2, D/2, in).swapaxes(1, 2).reshape(w.shape)
    let (h, d, cols) = (3, 8, 5);
    let w = Tensor::randn([h * d, cols], (tch::Kind::Float, Device::Cpu));
    let permuted = w
        .reshape([h, 2, d / 2, cols])
        .transpose(1, 2)
        .reshape([h * d, cols]);
    assert!(gguf::unpermute_qk(&permuted, h).equal(&w));
}

#[test]
fn hf_plugin_codec_reads_only_the_tokenizer() {
    use align_core::TextCodec;
    for path in [fixture("tiny-llama"), gguf_path()] {
        let tok = align_models::hf::load_tokenizer(&path).unwrap().unwrap();
        let ids = tok
            .encode_chat_prompt("What is the capital of France?")
            .unwrap();
        let rendered = expected_json("tiny-llama")["chat"]["rendered"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(ids, TextTokenizer::encode(&tok, &rendered, false).unwrap());
        assert_eq!(TextCodec::eos_token_id(&tok), tok.eos_token_id());
    }
    assert!(align_models::hf::load_tokenizer(&fixture("tiny-bert"))
        .unwrap()
        .is_none());
}

/// A SentencePiece vocabulary in a GGUF (`tokenizer.ggml.model = "llama"`,
/// scores, no merges, byte fallback) tokenises and decodes as transformers'
/// GGUF loader does: leading and repeated spaces, bytes outside the
/// vocabulary, special tokens written in the text, BOS first.
#[test]
fn sentencepiece_gguf_tokenizer_matches_transformers() {
    let meta = expected_json("tiny-spm-gguf");
    assert_eq!(meta["transformers"], "5.24.0");
    let path = fixture("tiny-spm-gguf").join("tiny-spm.gguf");
    let tok = gguf::load_tokenizer(&path)
        .unwrap()
        .expect("the file has a tokenizer");
    let rows = meta["rows"].as_array().unwrap();
    assert!(rows.len() >= 8);
    for row in rows {
        let text = row["text"].as_str().unwrap();
        let want: Vec<i64> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, want, "ids of {text:?}");
        let decoded = tok.decode(&got, true).unwrap();
        assert_eq!(
            decoded,
            row["decoded"].as_str().unwrap(),
            "decoding of {text:?}"
        );
    }
}
