//! Writing a model as a Hugging Face directory (config.json, f32 model.safetensors,
//! tokenizer.json, tokenizer_config.json), atomically: everything goes into a temporary
//! sibling directory that is renamed into place, so a crash never leaves a half-written model.

use super::config::LlamaConfig;
use super::tokenizer::Tokenizer;
use super::weights::{save_params_safetensors, Params};
use anyhow::{Context, Result};
use std::path::Path;

pub fn save_model_dir(
    dir: &Path,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    tokenizer: &Tokenizer,
    tokenizer_config: &serde_json::Value,
) -> Result<()> {
    let name = dir
        .file_name()
        .with_context(|| format!("{}: not a directory name", dir.display()))?
        .to_string_lossy()
        .to_string();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let write = |file: &str, text: String| -> Result<()> {
        let p = tmp.join(file);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&cfg.to_hf_json())?,
    )?;
    let tok_json = tokenizer
        .inner()
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("cannot serialise tokenizer: {e}"))?;
    write("tokenizer.json", tok_json)?;
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(tokenizer_config)?,
    )?;
    save_params_safetensors(cfg, params, &tmp.join("model.safetensors"))?;
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old)
            .with_context(|| format!("cannot move {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}
