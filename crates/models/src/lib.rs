//! Language models on tch, each registered as a `model` plugin.
//!
//! - [`tabular`]: a tabular policy for enumerable toy tasks.
//! - [`hf`]: the `hf` plugin — pretrained transformer LMs from an HF directory
//!   ([`llama`], [`gpt2`], [`gpt_neox`]) or a Llama [`gguf`] file, with their
//!   [`tokenizer`]. [`bert`] is an encoder for reward models (not a policy).
//! - [`lora`]: LoRA adapters on Llama (`[model.hf] lora = { … }`), PEFT's layout.

pub mod bert;
pub mod check;
pub mod common;
pub mod error;
pub mod export;
pub mod gguf;
pub mod gpt2;
pub mod gpt_neox;
pub mod hf;
pub mod llama;
pub mod lora;
#[cfg(feature = "cpu-decode-kernel")]
mod openmp;
pub mod tabular;
pub mod tokenizer;
pub mod weights;

pub use error::ModelError;
pub use hf::{load, Architecture, LanguageModel};
pub use tokenizer::{ChatMessage, TextTokenizer};
pub use weights::DType;
