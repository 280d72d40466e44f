//! Per-token log-probs of completions given prompts, batched by total length: the reference
//! model's path in the RL loop, the model judge's, and `cada score`'s.

use crate::backend::Backend;
use crate::model::llama::{shifted_targets, Llama};
use anyhow::{bail, Result};

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
        let hidden = model.forward_inference(be, &ids, batch, seq, |_, _, _| Ok(()))?;
        let targets = be.upload_ids(&shifted_targets(&ids, batch, seq))?;
        let (logp, _, _) =
            model.hidden_logprobs(be, &hidden, batch * seq, &targets, temperature)?;
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
