//! Text ↔ token ids, for tasks and reward models that work on text.

/// A tokenizer as the pipeline needs it (implemented by the models crate on
/// HF `tokenizers`).
pub trait TextCodec: Send + Sync {
    /// Token ids of `text`; `special` adds the tokenizer's usual special tokens
    /// (BOS …), as for a prompt.
    fn encode(&self, text: &str, special: bool) -> anyhow::Result<Vec<i64>>;

    /// Token ids of a single-turn chat prompt rendered with the model's chat
    /// template (ready for the assistant's reply); plain `encode` when the
    /// model has no template.
    fn encode_chat_prompt(&self, user: &str) -> anyhow::Result<Vec<i64>> {
        self.encode(user, true)
    }

    /// Text of `ids`, special tokens dropped.
    fn decode(&self, ids: &[i64]) -> anyhow::Result<String>;

    fn eos_token_id(&self) -> Option<i64>;
}

/// The decoded text of one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleText {
    pub prompt: String,
    pub completion: String,
}
