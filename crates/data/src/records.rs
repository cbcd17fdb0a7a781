//! Record types shared by every dataset.

use serde::{Deserialize, Serialize};

/// A prompt with a preferred and a dispreferred completion. `chosen` and
/// `rejected` are completions only: the full texts are `prompt + chosen` and
/// `prompt + rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// A prompt with a gold (reference / SFT) completion; the full text is
/// `prompt + reference`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demonstration {
    pub prompt: String,
    pub reference: String,
}

/// A text with a human rating on a numeric scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatedText {
    /// Identifier from the source file (stable across releases of it).
    pub id: String,
    pub text: String,
    pub valence: f64,
}

/// A text with a binary label, for classifier reward models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledText {
    pub text: String,
    pub label: bool,
}
