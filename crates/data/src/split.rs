//! Deterministic train / validation / test splits.
//!
//! A record's split is a function of a stable key only (for text records, the
//! normalised text: see [`text_key`]): `u = first 8 bytes of
//! SHA-256(salt ‖ 0x1F ‖ key)` read big-endian, scaled to `[0, 1)`; `u < test`
//! is test, `u < test + validation` validation, the rest train. SHA-256 is
//! specified bit for bit (FIPS 180-4), so every machine, build and run puts a
//! record in the same split, independent of file order, threads or platform.
//! Records with the same normalised text always land in the same split, so a
//! text repeated across sources cannot leak from train into test.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Fractions of records held out; the rest is train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    #[serde(default = "tenth")]
    pub validation: f64,
    #[serde(default = "tenth")]
    pub test: f64,
    /// Changing the salt draws a different (equally deterministic) split.
    #[serde(default = "default_salt")]
    pub salt: String,
}

fn tenth() -> f64 {
    0.1
}

fn default_salt() -> String {
    "brain-rs".into()
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            validation: tenth(),
            test: tenth(),
            salt: default_salt(),
        }
    }
}

impl SplitConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        for (key, v) in [
            ("split.validation", self.validation),
            ("split.test", self.test),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(DataError::Config {
                    key,
                    message: format!("must be in [0, 1), got {v}"),
                });
            }
        }
        if self.validation + self.test >= 1.0 {
            return Err(DataError::Config {
                key: "split",
                message: format!(
                    "validation + test must leave some train data, got {} + {}",
                    self.validation, self.test
                ),
            });
        }
        Ok(())
    }

    /// The split of the record with stable key `key`.
    pub fn split_of(&self, key: &str) -> Split {
        let u = stable_unit(&self.salt, key);
        if u < self.test {
            Split::Test
        } else if u < self.test + self.validation {
            Split::Validation
        } else {
            Split::Train
        }
    }
}

/// A uniform number in `[0, 1)` determined by `(salt, key)`: the first 8
/// bytes of SHA-256(salt ‖ 0x1F ‖ key), big-endian, top 53 bits.
pub fn stable_unit(salt: &str, key: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0x1F]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The stable key of a text: lower-cased, every run of non-alphanumeric
/// characters turned into one space, trimmed. Copies that differ only in
/// case, punctuation or spacing share a key (and so a split).
pub fn text_key(text: &str) -> String {
    let mut key = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if gap && !key.is_empty() {
                key.push(' ');
            }
            gap = false;
            key.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    key
}

/// Records grouped by split.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits<T> {
    pub train: Vec<T>,
    pub validation: Vec<T>,
    pub test: Vec<T>,
}

impl<T> Default for Splits<T> {
    fn default() -> Self {
        Splits {
            train: Vec::new(),
            validation: Vec::new(),
            test: Vec::new(),
        }
    }
}

impl<T> Splits<T> {
    pub fn get(&self, split: Split) -> &[T] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    pub fn get_mut(&mut self, split: Split) -> &mut Vec<T> {
        match split {
            Split::Train => &mut self.train,
            Split::Validation => &mut self.validation,
            Split::Test => &mut self.test,
        }
    }

    /// Groups `items` by `split_of`, keeping their order within each split.
    pub fn partition(items: impl IntoIterator<Item = T>, split_of: impl Fn(&T) -> Split) -> Self {
        let mut out = Splits::default();
        for item in items {
            let s = split_of(&item);
            out.get_mut(s).push(item);
        }
        out
    }

    pub fn counts(&self) -> [usize; 3] {
        [self.train.len(), self.validation.len(), self.test.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_unit_is_sha256_of_salt_and_key() {
        // python3 -c "import hashlib; d = hashlib.sha256(b'brain-rs\x1f' + KEY).digest();
        //   print((int.from_bytes(d[:8], 'big') >> 11) / 2**53)"
        assert_eq!(stable_unit("brain-rs", "hello"), 0.34508796676876385);
        assert_eq!(
            stable_unit("brain-rs", "a film that s great"),
            0.807222779783276
        );
        assert_ne!(
            stable_unit("brain-rs", "hello"),
            stable_unit("other", "hello")
        );
    }

    #[test]
    fn split_fractions_are_respected_and_stable() {
        let c = SplitConfig {
            validation: 0.2,
            test: 0.1,
            ..Default::default()
        };
        let keys: Vec<String> = (0..20_000).map(|i| format!("record {i}")).collect();
        let splits = Splits::partition(keys.iter(), |k| c.split_of(k));
        let [tr, va, te] = splits.counts();
        // Binomial(20000, p): standard deviations are 57 (p = .2) and 42 (p = .1).
        assert!((va as f64 - 4000.0).abs() < 300.0, "validation {va}");
        assert!((te as f64 - 2000.0).abs() < 250.0, "test {te}");
        assert_eq!(tr + va + te, 20_000);
        // The same key always gets the same split; order does not matter.
        let again = Splits::partition(keys.iter().rev(), |k| c.split_of(k));
        assert_eq!(again.test.len(), te);
        assert!(splits.test.iter().all(|k| c.split_of(k) == Split::Test));
    }

    #[test]
    fn text_key_ignores_case_punctuation_and_spacing() {
        assert_eq!(
            text_key("  A Film -- that's GREAT!! "),
            "a film that s great"
        );
        assert_eq!(
            text_key("a film, that's great"),
            text_key("A FILM THAT'S great.")
        );
        assert_ne!(text_key("a film"), text_key("a films"));
    }

    #[test]
    fn bad_fractions_are_rejected() {
        let c = SplitConfig {
            validation: 0.6,
            test: 0.5,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("validation + test"));
        let c = SplitConfig {
            test: -0.1,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("split.test"));
    }
}
