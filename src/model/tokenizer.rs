//! `tokenizer.json` through the `tokenizers` crate, plus the special tokens from
//! `tokenizer_config.json`.

use anyhow::{Context, Result};
use std::path::Path;

/// A token's `[start, end)` in its text, in characters.
pub type CharSpan = (usize, usize);

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// where it came from, for error messages
    pub source: String,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer ({e})", path.display()))?;
        Ok(Tokenizer {
            inner,
            source: path.display().to_string(),
        })
    }

    pub fn from_json_str(json: &str, source: &str) -> Result<Self> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| anyhow::anyhow!("{source}: cannot load tokenizer ({e})"))?;
        Ok(Tokenizer {
            inner,
            source: source.to_string(),
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Size of the id space (vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce, plus one.
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// `add_special_tokens` runs the post-processor (e.g. adds BOS where the tokenizer defines it).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("{}: cannot encode text ({e})", self.source))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`encode`](Self::encode) without special tokens, with each token's span in the text in
    /// characters (Unicode scalar values, as Python's tokenizers reports offsets).
    pub fn encode_with_char_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<CharSpan>)> {
        let enc = self
            .inner
            .encode_char_offsets(text, false)
            .map_err(|e| anyhow::anyhow!("{}: cannot encode text ({e})", self.source))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("{}: cannot decode ids ({e})", self.source))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Checks that every id the tokenizer can produce fits the model's embedding table.
    pub fn check_fits(&self, model_vocab: usize, model_source: &str) -> Result<()> {
        let bound = self.id_bound();
        if bound > model_vocab {
            anyhow::bail!(
                "{}: tokenizer produces ids up to {} but {model_source} field `vocab_size` is {model_vocab} (tokenizer/model vocab mismatch)",
                self.source,
                bound - 1
            );
        }
        Ok(())
    }
}

/// Reads `tokenizer_config.json` when present (chat template, special tokens).
pub fn read_tokenizer_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(serde_json::json!({}));
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}
