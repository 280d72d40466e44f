//! `cada score`: per-token log-probs of completions given prompts (the reference-model path of
//! the RL loop, and the way to check the engine against other tools).
//!
//! Input lines: `{"prompt": str, "completion": str}` (raw text, the prompt with the tokenizer's
//! special tokens), `{"prompt_ids": [int], "completion_ids": [int]}`, or TRL's conversational
//! form, `prompt` a list of messages (`completion` one too, or text for one assistant turn),
//! rendered by the chat template and split as SFT does (src/cada/chat_data.rs).
//! Output lines: `{"completion_ids": [...], "logprobs": [...], "sum_logprob": x}`.

use super::OnDevice;
use crate::backend::Backend;
use crate::model::llama::Llama;
use crate::model::load::LoadedModel;
pub use crate::model::score::{score_items, ScoreItem, ScoreResult};
use anyhow::{bail, Context, Result};
use std::path::Path;

fn ids_field(v: &serde_json::Value, field: &str, at: &str) -> Result<Vec<u32>> {
    let arr = v[field]
        .as_array()
        .with_context(|| format!("{at}: field `{field}` must be a list of integers"))?;
    arr.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&i| i <= u32::MAX as u64)
                .map(|i| i as u32)
                .with_context(|| format!("{at}: field `{field}` holds {x}, not a token id"))
        })
        .collect()
}

/// Reads and tokenizes a score JSONL file; errors name `file:line` and the field.
pub fn read_score_input(path: &Path, model: &LoadedModel) -> Result<Vec<ScoreItem>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
        let item = if v.get("prompt_ids").is_some() || v.get("completion_ids").is_some() {
            ScoreItem {
                prompt_ids: ids_field(&v, "prompt_ids", &at)?,
                completion_ids: ids_field(&v, "completion_ids", &at)?,
            }
        } else if v["prompt"].is_array() {
            let rec = crate::cada::data::SftRecord {
                body: crate::cada::data::SftBody::PromptCompletion {
                    prompt: crate::cada::data::turns_field(&v, "prompt", &at)?,
                    completion: crate::cada::data::turns_field(&v, "completion", &at)?,
                },
                at: at.clone(),
                inputs: crate::cada::data::line_inputs(&v, &at)?,
            };
            let seq = crate::cada::chat_data::sft_seq(model, &rec)?;
            ScoreItem {
                prompt_ids: seq.ctx,
                completion_ids: seq.completion,
            }
        } else {
            let prompt = v["prompt"].as_str().with_context(|| {
                format!("{at}: missing string field `prompt` (or `prompt_ids`)")
            })?;
            let completion = v["completion"]
                .as_str()
                .with_context(|| format!("{at}: missing string field `completion`"))?;
            ScoreItem {
                prompt_ids: model.tokenizer.encode(prompt, true)?,
                completion_ids: model.tokenizer.encode(completion, false)?,
            }
        };
        if item.prompt_ids.is_empty() {
            bail!("{at}: the prompt is empty (at least one token is needed to condition on)");
        }
        for (field, ids) in [
            ("prompt_ids", &item.prompt_ids),
            ("completion_ids", &item.completion_ids),
        ] {
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= model.cfg.vocab_size) {
                bail!(
                    "{at}: field `{field}` holds token id {bad} ≥ the model's vocab_size {}",
                    model.cfg.vocab_size
                );
            }
        }
        let len = item.prompt_ids.len() + item.completion_ids.len();
        if len > model.cfg.max_sequence_len() {
            bail!(
                "{at}: prompt + completion is {len} tokens, longer than the model's {}",
                model.cfg.max_sequence_what()
            );
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("{}: no input lines", path.display());
    }
    Ok(items)
}

pub struct ScoreTask<'a> {
    pub model: &'a LoadedModel,
    pub items: Vec<ScoreItem>,
    pub temperature: f32,
}

impl OnDevice for ScoreTask<'_> {
    type Output = Vec<ScoreResult>;
    fn run<B: Backend>(self, be: &B) -> Result<Vec<ScoreResult>> {
        anyhow::ensure!(
            self.temperature > 0.0,
            "--temperature must be > 0 for scoring (got {})",
            self.temperature
        );
        let model = Llama::from_host(be, self.model.cfg.clone(), &self.model.params)?;
        score_items(be, &model, &self.items, self.temperature, 8192)
    }
}
