//! Property-based fuzzing of the model-file readers: the GGUF reader (and
//! everything a file it accepts goes through: dequantization, import,
//! config checks, the tokenizer rebuilt from metadata, the model built and
//! run), the safetensors header check and reader, and `config.json` sizes.
//! Every input must give `Ok` or `Err`, never a panic: there is no
//! `catch_unwind` here, a panic fails the test.
//!
//! Inputs: random bytes, and mutations of valid files built in the test
//! (bytes flipped, inserted, removed, the file truncated, and counts,
//! lengths, alignment, dimensions, types and offsets set to extreme values).
//!
//! Cases: proptest's default of 256 per target in CI. `PROPTEST_CASES`
//! overrides it (proptest reads it into `ProptestConfig::default()`, which
//! [`config`] starts from). A longer local run:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p align-models --test fuzz --release
//! ```

mod common;

use std::path::Path;
use std::sync::OnceLock;

use align_models::gguf::{self, GgufFile};
use align_models::hf::build_causal;
use align_models::weights::{check_safetensors_header, read_safetensors, Weights};
use align_models::{DType, TextTokenizer};
use common::gguf::{tiny_llama, Field, Gguf, Meta};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

/// 256 cases unless `PROPTEST_CASES` says otherwise; no regression files
/// written into the source tree (a failure prints its input).
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs a parsed-or-refused GGUF through everything downstream.
fn exercise_gguf(bytes: Vec<u8>) {
    let path = Path::new("fuzz.gguf");
    let Ok(f) = GgufFile::from_bytes(path, bytes) else {
        return;
    };
    for t in &f.tensors {
        if let Ok(w) = f.tensor_f32(t) {
            assert_eq!(w.numel(), t.numel());
        }
    }
    let _ = gguf::load_tokenizer_from(&f);
    let Ok(imported) = gguf::import_file(&f) else {
        return;
    };
    if let Some(tok) = &imported.tokenizer {
        if let Ok(t) = TextTokenizer::from_parts(tok.clone(), path, None, None, None, 1 << 20) {
            let _ = t.encode("ab cd <|end|> x\u{1F600}", true);
        }
    }
    let weights = Weights::from_tensors(
        path,
        imported
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
    );
    let Ok((policy, _)) = build_causal(
        path,
        &imported.config,
        &weights,
        DType::F32,
        Device::Cpu,
        None,
    ) else {
        return;
    };
    // A model that loaded runs.
    let ids = Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu));
    let logits = tch::no_grad(|| policy.forward(&ids, &ids.ones_like()));
    assert_eq!(logits.size(), [1, 3, policy.vocab_size()]);
}

fn base_gguf() -> &'static (Vec<u8>, Vec<Field>) {
    static BASE: OnceLock<(Vec<u8>, Vec<Field>)> = OnceLock::new();
    BASE.get_or_init(|| tiny_llama().bytes_and_fields())
}

/// Values that break size arithmetic.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(31),
        Just(u32::MAX as u64),
        Just(1 << 32),
        Just(1 << 40),
        Just(i64::MAX as u64),
        Just(1 << 63),
        Just(u64::MAX),
        Just(u64::MAX - 7),
        0u64..4096,
        any::<u64>(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        xor: u8,
    },
    Truncate {
        keep: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// A size field of the file (see [`Field`]) set to `value`.
    Field {
        which: usize,
        value: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        // Weighted: the size fields are what hostile files set.
        4 => (any::<usize>(), extreme()).prop_map(|(which, value)| Mutation::Field { which, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, fields: &[Field], m: &Mutation) {
    let len = bytes.len().max(1);
    match m {
        Mutation::Flip { at, xor } => {
            if let Some(b) = bytes.get_mut(at % len) {
                *b ^= xor;
            }
        }
        Mutation::Truncate { keep } => bytes.truncate(keep % len),
        Mutation::Insert { at, bytes: more } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, more.iter().copied());
        }
        Mutation::Remove { at, len: n } => {
            let at = at % len;
            let end = (at + n).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Field { which, value } => {
            let f = fields[which % fields.len()];
            let le = value.to_le_bytes();
            if let Some(slot) = bytes.get_mut(f.pos..f.pos + f.width) {
                slot.copy_from_slice(&le[..f.width]);
            }
        }
    }
}

/// A metadata key of [`tiny_llama`] and a hostile value for it.
fn metadata_edit() -> impl Strategy<Value = (String, Meta)> {
    let keys = prop_oneof![
        Just("llama.embedding_length"),
        Just("llama.attention.head_count"),
        Just("llama.attention.head_count_kv"),
        Just("llama.attention.key_length"),
        Just("llama.block_count"),
        Just("llama.feed_forward_length"),
        Just("llama.context_length"),
        Just("llama.rope.freq_base"),
        Just("llama.attention.layer_norm_rms_epsilon"),
        Just("general.alignment"),
        Just("tokenizer.ggml.eos_token_id"),
        Just("tokenizer.ggml.bos_token_id"),
        Just("tokenizer.ggml.model"),
        Just("tokenizer.ggml.pre"),
        Just("tokenizer.ggml.merges"),
        Just("tokenizer.ggml.tokens"),
        Just("tokenizer.ggml.token_type"),
        Just("tokenizer.ggml.scores"),
        Just("general.architecture"),
    ];
    let values = prop_oneof![
        extreme().prop_map(|v| Meta::U32(v as u32)),
        extreme().prop_map(Meta::U64),
        prop_oneof![
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(-1.0f32),
            Just(0.0),
            any::<f32>()
        ]
        .prop_map(Meta::F32),
        prop_oneof![
            Just("llama".to_string()),
            Just("gpt2".to_string()),
            Just("smollm".to_string()),
            Just(String::new()),
            "[a-z ]{0,8}"
        ]
        .prop_map(Meta::Str),
        proptest::collection::vec("[a-dĠ ]{0,4}", 0..20)
            .prop_map(|v| { Meta::Array(8, v.into_iter().map(Meta::Str).collect()) }),
        proptest::collection::vec(extreme(), 0..20)
            .prop_map(|v| { Meta::Array(4, v.into_iter().map(|x| Meta::U32(x as u32)).collect()) }),
        proptest::collection::vec(any::<f32>(), 0..20)
            .prop_map(|v| Meta::Array(6, v.into_iter().map(Meta::F32).collect())),
    ];
    (keys, values).prop_map(|(k, v)| (k.to_string(), v))
}

/// A structural edit of a tensor of [`tiny_llama`].
#[derive(Debug, Clone)]
enum TensorEdit {
    Dims(Vec<u64>),
    Type(u32),
    Rename(String),
    Drop,
    Duplicate,
    /// A value of an F32 tensor set to NaN, ∞ or a huge number.
    Value(f32),
}

fn tensor_edit() -> impl Strategy<Value = (usize, TensorEdit)> {
    let edit = prop_oneof![
        proptest::collection::vec(extreme(), 0..6).prop_map(TensorEdit::Dims),
        prop_oneof![0u32..40, any::<u32>()].prop_map(TensorEdit::Type),
        prop_oneof![
            Just("blk.7.attn_q.weight".to_string()),
            Just("blk.01.attn_q.weight".to_string()),
            Just("blk.0.attn_q.bias".to_string()),
            Just("output.weight".to_string()),
            Just("blk.99999999999999999999.ffn_up.weight".to_string()),
            "[a-z.0-9]{0,12}"
        ]
        .prop_map(TensorEdit::Rename),
        Just(TensorEdit::Drop),
        Just(TensorEdit::Duplicate),
        prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::MAX)]
            .prop_map(TensorEdit::Value),
    ];
    (any::<usize>(), edit)
}

fn edited(metadata: &[(String, Meta)], tensors: &[(usize, TensorEdit)]) -> Gguf {
    let mut g = tiny_llama();
    for (k, v) in metadata {
        g.set(k, v.clone());
    }
    for (which, edit) in tensors {
        if g.tensors.is_empty() {
            break;
        }
        let i = which % g.tensors.len();
        match edit {
            TensorEdit::Dims(d) => g.tensors[i].dims = d.clone(),
            TensorEdit::Type(t) => g.tensors[i].ty = *t,
            TensorEdit::Rename(n) => g.tensors[i].name = n.clone(),
            TensorEdit::Drop => {
                g.tensors.remove(i);
            }
            TensorEdit::Duplicate => {
                let t = g.tensors[i].clone();
                g.tensors.push(t);
            }
            TensorEdit::Value(v) => {
                let t = &mut g.tensors[i];
                if t.ty == 0 && t.data.len() >= 4 {
                    let at = (which / 7 % (t.data.len() / 4)) * 4;
                    t.data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    g
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gguf_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        exercise_gguf(bytes);
    }

    /// Random bytes behind a valid magic, version and small counts, so
    /// parsing goes on into the metadata and tensor infos.
    #[test]
    fn gguf_random_bytes_after_header(
        version in prop_oneof![Just(2u32), Just(3u32)],
        n_tensors in 0u64..4,
        n_kv in 0u64..4,
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut file = b"GGUF".to_vec();
        file.extend(version.to_le_bytes());
        file.extend(n_tensors.to_le_bytes());
        file.extend(n_kv.to_le_bytes());
        file.extend(bytes);
        exercise_gguf(file);
    }

    #[test]
    fn gguf_byte_and_field_mutations(mutations in proptest::collection::vec(mutation(), 1..5)) {
        let (base, fields) = base_gguf();
        let mut bytes = base.clone();
        for m in &mutations {
            apply(&mut bytes, fields, m);
        }
        exercise_gguf(bytes);
    }

    #[test]
    fn gguf_metadata_and_tensor_edits(
        metadata in proptest::collection::vec(metadata_edit(), 0..4),
        tensors in proptest::collection::vec(tensor_edit(), 0..4),
    ) {
        exercise_gguf(edited(&metadata, &tensors).bytes());
    }

    #[test]
    fn safetensors_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_safetensors_header(&bytes);
        let _ = read_safetensors(Path::new("fuzz.safetensors"), &bytes);
    }

    #[test]
    fn safetensors_byte_mutations(mutations in proptest::collection::vec(mutation(), 1..5)) {
        let (base, fields) = base_safetensors();
        let mut bytes = base.clone();
        for m in &mutations {
            apply(&mut bytes, fields, m);
        }
        exercise_safetensors(&bytes);
    }

    #[test]
    fn safetensors_header_edits(
        entries in proptest::collection::vec(header_entry(), 0..4),
        data_len in 0usize..128,
        length_delta in prop_oneof![Just(0i64), -8i64..8, Just(i64::MAX), Just(i64::MIN)],
    ) {
        let mut header = serde_json::Map::new();
        for (i, e) in entries.into_iter().enumerate() {
            header.insert(format!("t{i}"), e);
        }
        let h = serde_json::Value::Object(header).to_string();
        let n = (h.len() as i64).wrapping_add(length_delta) as u64;
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend(h.as_bytes());
        bytes.extend(std::iter::repeat_n(0x3fu8, data_len));
        exercise_safetensors(&bytes);
    }

    /// `config.json` sizes set to extreme or inconsistent values, built
    /// against the tiny Llama's real weights.
    #[test]
    fn config_json_sizes(edits in proptest::collection::vec(config_edit(), 1..4)) {
        let dir = common::fixture("tiny-llama");
        let path = dir.join("config.json");
        let mut config: serde_json::Value = align_models::hf::read_json(&path).unwrap();
        for (key, value) in edits {
            config[key] = value;
        }
        let weights = Weights::from_dir(&dir).unwrap();
        if let Ok((policy, _)) = build_causal(&path, &config, &weights, DType::F32, Device::Cpu, None) {
            let ids = Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu));
            let logits = tch::no_grad(|| policy.forward(&ids, &ids.ones_like()));
            prop_assert_eq!(logits.size(), vec![1, 3, policy.vocab_size()]);
        }
    }
}

fn config_edit() -> impl Strategy<Value = (&'static str, serde_json::Value)> {
    let key = prop_oneof![
        Just("vocab_size"),
        Just("hidden_size"),
        Just("intermediate_size"),
        Just("num_hidden_layers"),
        Just("num_attention_heads"),
        Just("num_key_value_heads"),
        Just("head_dim"),
        Just("max_position_embeddings"),
        Just("rms_norm_eps"),
        Just("tie_word_embeddings"),
        Just("attention_bias"),
        Just("hidden_act"),
        Just("architectures"),
    ];
    let value = prop_oneof![
        extreme().prop_map(serde_json::Value::from),
        prop_oneof![Just(-1i64), Just(i64::MIN), -64i64..64].prop_map(serde_json::Value::from),
        prop_oneof![Just(-1.0f64), Just(0.5), Just(1e300)].prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!("gelu")),
        Just(serde_json::json!(["GPT2LMHeadModel"])),
        Just(serde_json::json!(["GPTNeoXForCausalLM"])),
    ];
    (key, value)
}

fn exercise_safetensors(bytes: &[u8]) {
    let checked = check_safetensors_header(bytes);
    let read = read_safetensors(Path::new("fuzz.safetensors"), bytes);
    // What the reader accepts, the check accepted.
    if read.is_ok() {
        assert!(checked.is_ok());
    }
}

/// A valid safetensors file of three tensors (F32, F16, I64) and where its
/// header length lies.
fn base_safetensors() -> &'static (Vec<u8>, Vec<Field>) {
    static BASE: OnceLock<(Vec<u8>, Vec<Field>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let header = serde_json::json!({
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
            "c": {"dtype": "I64", "shape": [2], "data_offsets": [32, 48]},
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend((0..48u8).map(|i| i.wrapping_mul(37)));
        read_safetensors(Path::new("base.safetensors"), &bytes).expect("valid base");
        let fields = vec![Field {
            pos: 0,
            width: 8,
            what: "header length",
        }];
        (bytes, fields)
    })
}

/// A header entry: a dtype (known or not), a shape and offsets, each
/// possibly extreme.
fn header_entry() -> impl Strategy<Value = serde_json::Value> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("F64"),
        Just("I64"),
        Just("U8"),
        Just("BOOL"),
        Just("I8"),
        Just("Q4"),
        Just(""),
    ];
    let shape = proptest::collection::vec(extreme(), 0..4);
    let offsets = (extreme(), extreme());
    (dtype, shape, offsets, 0u8..4).prop_map(|(dtype, shape, (s, e), form)| match form {
        0 => serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [s, e]}),
        // Offsets near what the shape needs, so some entries are valid.
        1 => {
            let n: u64 = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d % 8));
            let shape: Vec<u64> = shape.iter().map(|d| d % 8).collect();
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [0, n.saturating_mul(4)]})
        }
        2 => serde_json::json!({"dtype": dtype, "shape": [-1, 2.5, "x"], "data_offsets": [s]}),
        _ => serde_json::json!([dtype, s, e]),
    })
}

#[test]
fn the_base_files_are_valid() {
    // The GGUF base loads and runs (so mutations start from a file that
    // reaches every stage).
    let (bytes, fields) = base_gguf();
    assert!(fields.len() > 50);
    let f = GgufFile::from_bytes(Path::new("base.gguf"), bytes.clone()).unwrap();
    let imported = gguf::import_file(&f).unwrap();
    assert!(imported.tokenizer.is_some());
    let weights = Weights::from_tensors(Path::new("base.gguf"), imported.tensors);
    assert!(build_causal(
        Path::new("base.gguf"),
        &imported.config,
        &weights,
        DType::F32,
        Device::Cpu,
        None
    )
    .is_ok());
    let (st, _) = base_safetensors();
    assert_eq!(read_safetensors(Path::new("b"), st).unwrap().len(), 3);
}
