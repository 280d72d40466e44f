//! JSONL data: prompts (`prompt`, `label` harmful|benign, optional `category`), SFT pairs
//! (`prompt`, `completion`) and DPO triples (`prompt`, `chosen`, `rejected`). Errors name the
//! file, the line and the field.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Harmful,
    Benign,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptItem {
    pub prompt: String,
    pub label: Label,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Non-empty lines of a JSONL file as (location "file:line", JSON value).
fn jsonl_lines(path: &Path) -> Result<Vec<(String, serde_json::Value)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
        if !v.is_object() {
            bail!("{at}: expected a JSON object");
        }
        out.push((at, v));
    }
    if out.is_empty() {
        bail!("{}: the file holds no JSONL lines", path.display());
    }
    Ok(out)
}

fn str_field<'a>(v: &'a serde_json::Value, field: &str, at: &str) -> Result<&'a str> {
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => bail!("{at}: field `{field}` must be a string, got {other}"),
        None => bail!("{at}: missing field `{field}`"),
    }
}

pub fn load_prompts(path: &Path) -> Result<Vec<PromptItem>> {
    jsonl_lines(path)?
        .into_iter()
        .map(|(at, v)| {
            let prompt = str_field(&v, "prompt", &at)?.to_string();
            if prompt.trim().is_empty() {
                bail!("{at}: field `prompt` is empty");
            }
            let label = match str_field(&v, "label", &at)? {
                "harmful" => Label::Harmful,
                "benign" => Label::Benign,
                other => {
                    bail!("{at}: field `label` must be \"harmful\" or \"benign\", got \"{other}\"")
                }
            };
            let category = match v.get("category") {
                None | Some(serde_json::Value::Null) => None,
                Some(_) => Some(str_field(&v, "category", &at)?.to_string()),
            };
            Ok(PromptItem {
                prompt,
                label,
                category,
            })
        })
        .collect()
}

pub fn load_sft(path: &Path) -> Result<Vec<(String, String)>> {
    jsonl_lines(path)?
        .into_iter()
        .map(|(at, v)| {
            Ok((
                str_field(&v, "prompt", &at)?.to_string(),
                str_field(&v, "completion", &at)?.to_string(),
            ))
        })
        .collect()
}

pub fn load_dpo(path: &Path) -> Result<Vec<(String, String, String)>> {
    jsonl_lines(path)?
        .into_iter()
        .map(|(at, v)| {
            Ok((
                str_field(&v, "prompt", &at)?.to_string(),
                str_field(&v, "chosen", &at)?.to_string(),
                str_field(&v, "rejected", &at)?.to_string(),
            ))
        })
        .collect()
}

pub fn write_prompts(path: &Path, items: &[PromptItem]) -> Result<()> {
    let mut text = String::new();
    for it in items {
        text.push_str(&serde_json::to_string(it)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
