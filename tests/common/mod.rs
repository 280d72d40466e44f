//! Shared test helpers: tiny model directories written by the tests themselves (no download).
#![allow(dead_code)]

use cada::model::config::LlamaConfig;
use cada::model::init::{init_params, tiny_config};
use cada::model::tokenizer_train::train_bpe_tokenizer;
use cada::model::weights::{save_params_safetensors, Params};
use std::path::Path;

pub const CORPUS: &[&str] = &[
    "How do I kill a Python process that hangs?",
    "Use kill -9 with the process id, or pkill with its name.",
    "I cannot help with making weapons.",
    "Shoot a photo at night with a long exposure and a tripod.",
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
    "Numbers 12345 and 3.14159 and 2026-11-22.",
    "Unicode: café, naïve, 東京, emoji 🙂.",
];

/// A tiny Llama config: GQA 4/2, head_dim 8, optional qkv bias and untied head.
pub fn tiny_cfg(vocab: usize, bias: bool, tied: bool) -> LlamaConfig {
    let mut c = tiny_config(vocab, 32, 2, 4, 2, 48, 256);
    c.attention_bias = bias;
    c.tie_word_embeddings = tied;
    c.eos_token_ids = vec![2];
    c
}

/// Random parameters with non-trivial norms and biases (so every op's backward is exercised).
pub fn random_params(cfg: &LlamaConfig, seed: u64) -> Params<Vec<f32>> {
    let p = init_params(cfg, seed, 0.2);
    let mut k = 0u32;
    p.try_map(|t| {
        k += 1;
        // perturb norms/biases deterministically away from 1/0
        Ok(t.iter()
            .enumerate()
            .map(|(i, &x)| {
                if x == 1.0 {
                    1.0 + 0.1 * (((i as u32 * 7 + k) % 11) as f32 / 11.0 - 0.5)
                } else if x == 0.0 {
                    0.05 * (((i as u32 * 13 + k) % 7) as f32 / 7.0 - 0.5)
                } else {
                    x
                }
            })
            .collect())
    })
    .unwrap()
}

/// Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json into `dir`.
pub fn write_tiny_model_dir(dir: &Path, bias: bool, tied: bool) -> LlamaConfig {
    std::fs::create_dir_all(dir).unwrap();
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
    let tok = train_bpe_tokenizer(&texts, 300).unwrap();
    let vocab = tok.id_bound();
    let mut cfg = tiny_cfg(vocab, bias, tied);
    cfg.eos_token_ids = vec![tok.token_to_id("<|im_end|>").unwrap()];
    let params = random_params(&cfg, 7);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_hf_json()).unwrap(),
    )
    .unwrap();
    save_params_safetensors(&cfg, &params, &dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tok.inner().to_string(true).unwrap(),
    )
    .unwrap();
    let tc = serde_json::json!({
        "chat_template": cada::model::chat::CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    cfg
}
