//! A small GGUF writer for crafting valid and hostile files in tests, and a
//! tiny Llama (with a byte-level BPE tokenizer) built with it.

/// A metadata value (GGUF value types 4, 6, 7, 8, 9, 10).
#[derive(Debug, Clone)]
pub enum Meta {
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type and elements.
    Array(u32, Vec<Meta>),
}

impl Meta {
    fn ty(&self) -> u32 {
        match self {
            Meta::U32(_) => 4,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Array(..) => 9,
            Meta::U64(_) => 10,
        }
    }

    pub fn str(s: &str) -> Meta {
        Meta::Str(s.to_string())
    }

    pub fn strings(items: &[&str]) -> Meta {
        Meta::Array(8, items.iter().map(|s| Meta::str(s)).collect())
    }
}

/// A tensor: ggml dims (innermost first), ggml type, raw bytes.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

/// Where a size field of the written file lies, for targeted mutation.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub pos: usize,
    /// 4 or 8 bytes.
    pub width: usize,
    pub what: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Gguf {
    pub kv: Vec<(String, Meta)>,
    pub tensors: Vec<GgufTensor>,
}

struct Writer {
    out: Vec<u8>,
    fields: Vec<Field>,
}

impl Writer {
    fn u32(&mut self, v: u32, what: Option<&'static str>) {
        if let Some(what) = what {
            self.fields.push(Field {
                pos: self.out.len(),
                width: 4,
                what,
            });
        }
        self.out.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64, what: Option<&'static str>) {
        if let Some(what) = what {
            self.fields.push(Field {
                pos: self.out.len(),
                width: 8,
                what,
            });
        }
        self.out.extend(v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u64(s.len() as u64, Some("string length"));
        self.out.extend(s.as_bytes());
    }
    fn value(&mut self, v: &Meta, key: &str) {
        match v {
            Meta::U32(x) => {
                let what = (key == "general.alignment").then_some("alignment");
                self.u32(*x, what)
            }
            Meta::U64(x) => self.u64(*x, None),
            Meta::F32(x) => self.out.extend(x.to_le_bytes()),
            Meta::Bool(b) => self.out.push(*b as u8),
            Meta::Str(s) => self.string(s),
            Meta::Array(ty, items) => {
                self.u32(*ty, Some("array element type"));
                self.u64(items.len() as u64, Some("array length"));
                for item in items {
                    self.value(item, "");
                }
            }
        }
    }
}

impl Gguf {
    fn alignment(&self) -> usize {
        self.kv
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| match v {
                Meta::U32(a) => Some(*a as usize),
                _ => None,
            })
            .unwrap_or(32)
    }

    /// The file's bytes and where its size fields are.
    pub fn bytes_and_fields(&self) -> (Vec<u8>, Vec<Field>) {
        let mut w = Writer {
            out: b"GGUF".to_vec(),
            fields: Vec::new(),
        };
        w.u32(3, None);
        w.u64(self.tensors.len() as u64, Some("tensor count"));
        w.u64(self.kv.len() as u64, Some("kv count"));
        for (k, v) in &self.kv {
            w.string(k);
            w.u32(v.ty(), Some("value type"));
            w.value(v, k);
        }
        // A hostile alignment is written as given but not padded by.
        let align = match self.alignment() {
            a if a.is_power_of_two() && a <= 4096 => a,
            _ => 32,
        };
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(align) * align;
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            w.string(&t.name);
            w.u32(t.dims.len() as u32, Some("dim count"));
            for &d in &t.dims {
                w.u64(d, Some("dim"));
            }
            w.u32(t.ty, Some("tensor type"));
            w.u64(off as u64, Some("tensor offset"));
        }
        let mut out = w.out;
        out.resize(out.len().div_ceil(align) * align, 0);
        let start = out.len();
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.resize(start + off, 0);
            out.extend(&t.data);
        }
        (out, w.fields)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes_and_fields().0
    }

    pub fn set(&mut self, key: &str, v: Meta) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.kv.push((key.to_string(), v)),
        }
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut GgufTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

/// F32 bytes of `n` small deterministic values.
pub fn f32_data(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let x = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32;
            (x / 1000.0 - 0.5).to_le_bytes()
        })
        .collect()
}

/// Q8_0 blocks (scale 1/64, small values) for `n` (a multiple of 32) values.
pub fn q8_0_data(n: usize) -> Vec<u8> {
    let scale = half::f16::from_f32(1.0 / 64.0).to_le_bytes();
    (0..n / 32)
        .flat_map(|b| {
            let mut block = scale.to_vec();
            block.extend((0..32).map(|i| ((i * 7 + b * 3) % 33) as u8));
            block
        })
        .collect()
}

/// Hidden size, heads, KV heads, layers, MLP width, vocabulary of [`tiny_llama`].
pub const TINY: (u64, u64, u64, u64, u64, u64) = (32, 4, 2, 2, 64, 16);

/// A tiny Llama GGUF: F32 and Q8_0 tensors, a byte-level BPE tokenizer with
/// merges, a special end token.
pub fn tiny_llama() -> Gguf {
    let (h, heads, kv_heads, layers, ffn, vocab) = TINY;
    let hd = h / heads;
    let mut g = Gguf::default();
    g.set("general.architecture", Meta::str("llama"));
    g.set("general.alignment", Meta::U32(32));
    g.set("llama.embedding_length", Meta::U32(h as u32));
    g.set("llama.attention.head_count", Meta::U32(heads as u32));
    g.set("llama.attention.head_count_kv", Meta::U32(kv_heads as u32));
    g.set("llama.block_count", Meta::U32(layers as u32));
    g.set("llama.feed_forward_length", Meta::U32(ffn as u32));
    g.set("llama.context_length", Meta::U32(32));
    g.set("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5));
    g.set("llama.rope.freq_base", Meta::F32(10000.0));
    g.set("tokenizer.ggml.model", Meta::str("gpt2"));
    let tokens = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "Ġ", "ab", "cd", "abcd", "Ġa", "Ġab",
        "<|end|>",
    ];
    assert_eq!(tokens.len() as u64, vocab);
    g.set("tokenizer.ggml.tokens", Meta::strings(&tokens));
    g.set(
        "tokenizer.ggml.merges",
        Meta::strings(&["a b", "c d", "ab cd", "Ġ a", "Ġa b"]),
    );
    let mut types = vec![Meta::U32(1); tokens.len()];
    types[15] = Meta::U32(3);
    g.set("tokenizer.ggml.token_type", Meta::Array(4, types));
    g.set("tokenizer.ggml.eos_token_id", Meta::U32(15));
    g.set("tokenizer.ggml.add_bos_token", Meta::Bool(false));
    let mut seed = 0;
    let mut f32_tensor = |name: String, dims: Vec<u64>| {
        seed += 1;
        let n = dims.iter().product::<u64>() as usize;
        GgufTensor {
            name,
            dims,
            ty: 0,
            data: f32_data(n, seed),
        }
    };
    let mut tensors = vec![GgufTensor {
        name: "token_embd.weight".into(),
        dims: vec![h, vocab],
        ty: 8,
        data: q8_0_data((h * vocab) as usize),
    }];
    tensors.push(f32_tensor("output_norm.weight".into(), vec![h]));
    for l in 0..layers {
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push(f32_tensor(b("attn_norm"), vec![h]));
        tensors.push(f32_tensor(b("attn_q"), vec![h, heads * hd]));
        tensors.push(f32_tensor(b("attn_k"), vec![h, kv_heads * hd]));
        tensors.push(f32_tensor(b("attn_v"), vec![h, kv_heads * hd]));
        tensors.push(f32_tensor(b("attn_output"), vec![heads * hd, h]));
        tensors.push(f32_tensor(b("ffn_norm"), vec![h]));
        tensors.push(f32_tensor(b("ffn_gate"), vec![h, ffn]));
        tensors.push(f32_tensor(b("ffn_up"), vec![h, ffn]));
        tensors.push(f32_tensor(b("ffn_down"), vec![ffn, h]));
    }
    g.tensors = tensors;
    g
}
