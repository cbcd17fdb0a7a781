//! The endpoint's response cache: one JSON file per request, named by the
//! SHA-256 of (base URL, model, request body) and written atomically, so
//! reruns cost nothing and concurrent processes can share the directory
//! (the worst a race does is fetch one answer twice).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    /// The key of one request.
    pub fn key(base_url: &str, model: &str, body: &str) -> String {
        let mut h = Sha256::new();
        // Length-prefixed, so no two different triples hash the same input.
        for part in [base_url, model, body] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The cached response, if there is a readable one (a damaged file is
    /// treated as missing and overwritten).
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn put(&self, key: &str, response: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.path(key);
        let text = serde_json::to_string(response)?;
        align_core::io::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing the judge cache (`cache` = {})", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_their_parts_and_entries_round_trip() {
        assert_ne!(Cache::key("ab", "c", "{}"), Cache::key("a", "bc", "{}"));
        assert_eq!(Cache::key("u", "m", "b").len(), 64);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(&dir.path().join("nested"));
        let key = Cache::key("u", "m", "b");
        assert!(cache.get(&key).is_none());
        let v = serde_json::json!({"choices": []});
        cache.put(&key, &v).unwrap();
        assert_eq!(cache.get(&key), Some(v));
        std::fs::write(cache.path(&key), "{trunc").unwrap();
        assert!(cache.get(&key).is_none());
    }
}
