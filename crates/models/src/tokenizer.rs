//! Text ↔ token ids with HF `tokenizers`, the special tokens an HF directory
//! declares, and its chat template (rendered with minijinja the way
//! transformers renders it: `trim_blocks` and `lstrip_blocks` on).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One chat turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Largest `tokenizer.json` read (real ones are below 40 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_id: Option<i64>,
}

/// `"<s>"` or `{"content": "<s>", …}` in tokenizer_config.json.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(self) -> String {
        match self {
            TokenSpec::Plain(s) => s,
            TokenSpec::Added { content } => content,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    bos_token: Option<TokenSpec>,
    #[serde(default)]
    eos_token: Option<TokenSpec>,
    #[serde(default)]
    chat_template: Option<TemplateSpec>,
}

/// `eos_token_id` in config.json / generation_config.json: one id or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Ids {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Deserialize)]
struct EosOnly {
    #[serde(default)]
    eos_token_id: Option<Ids>,
}

impl TextTokenizer {
    /// Reads `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`,
    /// `generation_config.json`, `config.json` when present) from an HF
    /// directory. `model_vocab` is the model's embedding rows: a tokenizer with
    /// more ids than that is an error.
    pub fn from_dir(dir: &Path, model_vocab: i64) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::NotFound(path));
        }
        crate::check::file_size(&path, MAX_TOKENIZER_BYTES, "a tokenizer.json")?;
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::file(&path, format!("cannot read tokenizer: {e}")))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            crate::hf::read_json(&config_path)?
        } else {
            TokenizerConfig::default()
        };
        let mut chat_template = match config.chat_template {
            Some(TemplateSpec::One(t)) => Some(t),
            Some(TemplateSpec::Named(list)) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template),
            None => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.is_file() {
            crate::check::file_size(&jinja, crate::hf::MAX_JSON_BYTES, "a chat template")?;
            chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .map_err(|e| ModelError::file(&jinja, e.to_string()))?,
            );
        }
        let eos_token = config.eos_token.map(TokenSpec::content);
        let mut eos_id = None;
        for name in ["generation_config.json", "config.json"] {
            let p = dir.join(name);
            if eos_id.is_none() && p.is_file() {
                let e: EosOnly = crate::hf::read_json(&p)?;
                eos_id = match e.eos_token_id {
                    Some(Ids::One(i)) => Some(i),
                    Some(Ids::Many(v)) => v.first().copied(),
                    None => None,
                };
            }
        }
        if eos_id.is_none() {
            eos_id = eos_token
                .as_deref()
                .and_then(|t| inner.token_to_id(t))
                .map(i64::from);
        }
        let tok = TextTokenizer {
            inner,
            path,
            chat_template,
            bos_token: config.bos_token.map(TokenSpec::content),
            eos_token,
            eos_id,
        };
        tok.check_vocab(model_vocab)?;
        Ok(tok)
    }

    /// Wraps an in-memory tokenizer (e.g. built from GGUF metadata).
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        origin: &Path,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        model_vocab: i64,
    ) -> Result<TextTokenizer> {
        let eos_id = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .map(i64::from);
        let tok = TextTokenizer {
            inner,
            path: origin.to_path_buf(),
            chat_template,
            bos_token,
            eos_token,
            eos_id,
        };
        tok.check_vocab(model_vocab)?;
        Ok(tok)
    }

    fn check_vocab(&self, model_vocab: i64) -> Result<()> {
        let n = self.inner.get_vocab_size(true) as i64;
        if n > model_vocab {
            return Err(ModelError::file(
                &self.path,
                format!(
                    "the tokenizer has {n} tokens but the model's vocab_size is {model_vocab}: \
                     they do not belong to the same model"
                ),
            ));
        }
        Ok(())
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; `special` adds the tokenizer's usual special tokens
    /// (e.g. BOS) through its post-processor.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| ModelError::file(&self.path, format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| ModelError::file(&self.path, format!("cannot decode: {e}")))
    }

    pub fn eos_token_id(&self) -> Option<i64> {
        self.eos_id
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template (as transformers' `apply_chat_template(…,
    /// tokenize=False)`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::file(&self.path, "this tokenizer has no chat template"))?;
        render_chat_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
        .map_err(|e| ModelError::file(&self.path, format!("chat template: {e:#}")))
    }

    /// Chat-formatted prompt ids: the rendered template tokenised without
    /// adding special tokens (the template writes them).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<i64>> {
        let text = self.apply_chat_template(messages, true)?;
        self.encode(&text, false)
    }
}

/// Renders an HF chat template with minijinja.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> std::result::Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)?;
    env.get_template("chat")?.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
    })
}

impl align_core::TextCodec for TextTokenizer {
    fn encode(&self, text: &str, special: bool) -> anyhow::Result<Vec<i64>> {
        Ok(TextTokenizer::encode(self, text, special)?)
    }

    fn encode_chat_prompt(&self, user: &str) -> anyhow::Result<Vec<i64>> {
        if self.chat_template.is_some() {
            Ok(self.encode_chat(&[ChatMessage::user(user)])?)
        } else {
            Ok(TextTokenizer::encode(self, user, true)?)
        }
    }

    fn decode(&self, ids: &[i64]) -> anyhow::Result<String> {
        Ok(TextTokenizer::decode(self, ids, true)?)
    }

    fn eos_token_id(&self) -> Option<i64> {
        self.eos_id
    }
}
