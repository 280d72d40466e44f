//! `cada score`: per-token log-probs of completions given prompts (the reference-model path of
//! the RL loop, and the way to check the engine against other tools).
//!
//! Input lines: `{"prompt": str, "completion": str}` or `{"prompt_ids": [int], "completion_ids": [int]}`.
//! Output lines: `{"completion_ids": [...], "logprobs": [...], "sum_logprob": x}`.

use super::OnDevice;
use crate::backend::Backend;
use crate::model::llama::{shifted_targets, Llama};
use crate::model::load::LoadedModel;
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct ScoreItem {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreResult {
    pub completion_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub sum_logprob: f64,
}

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
        if len > model.cfg.max_position_embeddings {
            bail!("{at}: prompt + completion is {len} tokens, longer than the model's max_position_embeddings {}", model.cfg.max_position_embeddings);
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("{}: no input lines", path.display());
    }
    Ok(items)
}

/// Log-probs of each completion token given everything before it, at `temperature`.
pub fn score_items<B: Backend>(
    be: &B,
    model: &Llama<B>,
    items: &[ScoreItem],
    temperature: f32,
    batch_tokens: usize,
) -> Result<Vec<ScoreResult>> {
    let mut out = Vec::with_capacity(items.len());
    // Batches of similar total size; the fused head keeps memory O(tokens × hidden).
    let mut start = 0;
    while start < items.len() {
        let mut end = start + 1;
        let mut longest = items[start].prompt_ids.len() + items[start].completion_ids.len();
        while end < items.len() {
            let l = longest.max(items[end].prompt_ids.len() + items[end].completion_ids.len());
            if l * (end + 1 - start) > batch_tokens {
                break;
            }
            longest = l;
            end += 1;
        }
        let chunk = &items[start..end];
        let (batch, seq) = (chunk.len(), longest);
        let mut ids = vec![0u32; batch * seq];
        for (b, it) in chunk.iter().enumerate() {
            let row = &mut ids[b * seq..];
            row[..it.prompt_ids.len()].copy_from_slice(&it.prompt_ids);
            row[it.prompt_ids.len()..it.prompt_ids.len() + it.completion_ids.len()]
                .copy_from_slice(&it.completion_ids);
        }
        let fwd = model.forward(be, &ids, batch, seq)?;
        let targets = be.upload_ids(&shifted_targets(&ids, batch, seq))?;
        let (logp, _, _) = model.token_logprobs(be, &fwd, &targets, temperature)?;
        let logp = be.download(&logp)?;
        for (b, it) in chunk.iter().enumerate() {
            let p = it.prompt_ids.len();
            // completion token j sits at position p + j and is predicted at position p + j − 1
            let lps: Vec<f32> = (0..it.completion_ids.len())
                .map(|j| logp[b * seq + p + j - 1])
                .collect();
            if let Some(bad) = lps.iter().find(|x| !x.is_finite()) {
                bail!(
                    "score: non-finite log-prob {bad} for input line {}",
                    start + b + 1
                );
            }
            let sum = lps.iter().map(|&x| x as f64).sum();
            out.push(ScoreResult {
                completion_ids: it.completion_ids.clone(),
                logprobs: lps,
                sum_logprob: sum,
            });
        }
        start = end;
    }
    Ok(out)
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
