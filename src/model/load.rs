//! Opening a model: a Hugging Face directory (config.json, safetensors, tokenizer files) or a
//! `.gguf` file (dequantised in memory through `convert::gguf_to_hf`).

use super::chat::{ChatTemplate, CHATML_TEMPLATE};
use super::config::LlamaConfig;
use super::tokenizer::{read_tokenizer_config, Tokenizer};
use super::weights::{load_params, InMemoryTensors, Params, SafetensorsDir};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct LoadedModel {
    pub cfg: LlamaConfig,
    pub params: Params<Vec<f32>>,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    pub tokenizer_config: serde_json::Value,
    pub source: PathBuf,
}

impl LoadedModel {
    /// Token ids that end a generation: the config's eos ids plus the tokenizer's eos token
    /// and, for chat models, the end-of-turn token.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = self.cfg.eos_token_ids.clone();
        let eos_tok = match self.tokenizer_config.get("eos_token") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => v.get("content").and_then(|c| c.as_str()).map(String::from),
            None => None,
        };
        for t in
            eos_tok
                .iter()
                .map(String::as_str)
                .chain(["<|im_end|>", "<|eot_id|>", "<|endoftext|>"])
        {
            if let Some(id) = self.tokenizer.token_to_id(t) {
                if (id as usize) < self.cfg.vocab_size && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

/// Loads a model directory or a `.gguf` file, checking that tokenizer and model agree.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    if !path.exists() {
        anyhow::bail!(
            "{}: no such file or directory (expected a model directory or a .gguf file)",
            path.display()
        );
    }
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        return load_gguf(path);
    }
    let cfg_path = path.join("config.json");
    let cfg = LlamaConfig::from_file(&cfg_path)?;
    let tok_path = path.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    tokenizer.check_fits(cfg.vocab_size, &cfg_path.display().to_string())?;
    let tokenizer_config = read_tokenizer_config(path)?;
    let st = SafetensorsDir::open(path)?;
    let params = load_params(&cfg, &st)?;
    let tc_src = path.join("tokenizer_config.json").display().to_string();
    let chat = chat_or_default(&tokenizer_config, &tc_src)?;
    Ok(LoadedModel {
        cfg,
        params,
        tokenizer,
        chat,
        tokenizer_config,
        source: path.to_path_buf(),
    })
}

fn chat_or_default(tokenizer_config: &serde_json::Value, source: &str) -> Result<ChatTemplate> {
    match ChatTemplate::from_tokenizer_config(tokenizer_config, source)? {
        Some(t) => Ok(t),
        None => ChatTemplate::new(CHATML_TEMPLATE, "", "", "built-in ChatML template"),
    }
}

fn load_gguf(path: &Path) -> Result<LoadedModel> {
    let hf = super::convert::gguf_to_hf(path)?;
    let src = path.display().to_string();
    let cfg = LlamaConfig::from_json(&hf.config, &format!("{src} (config from GGUF metadata)"))?;
    let tokenizer = Tokenizer::from_json_str(
        &hf.tokenizer_json,
        &format!("{src} (tokenizer from GGUF metadata)"),
    )?;
    tokenizer.check_fits(cfg.vocab_size, &src)?;
    let tensors = InMemoryTensors {
        source: src.clone(),
        tensors: hf
            .tensors
            .into_iter()
            .map(|(n, s, d)| (n, (s, d)))
            .collect(),
    };
    let params = load_params(&cfg, &tensors)?;
    let chat = chat_or_default(&hf.tokenizer_config, &src)?;
    Ok(LoadedModel {
        cfg,
        params,
        tokenizer,
        chat,
        tokenizer_config: hf.tokenizer_config,
        source: path.to_path_buf(),
    })
}
