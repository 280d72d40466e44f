//! Batched generation with a KV cache: many sequences of different prompt lengths at once, as
//! rollouts need; sampling with temperature / top-p / top-k from a seeded RNG. The decode
//! steps go through a [`Decoder`], which records the step once and replays it (CUDA graphs).

use crate::backend::Backend;
use crate::model::llama::{Decoder, Llama};
use anyhow::Result;
use rand::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// 0 = greedy
    pub temperature: f32,
    /// 1.0 = off
    pub top_p: f32,
    /// 0 = off
    pub top_k: usize,
    pub max_new_tokens: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
        }
    }
}

pub struct Generation {
    /// generated tokens per prompt (the stop token, when hit, is included)
    pub tokens: Vec<Vec<u32>>,
    /// true when the sequence ended on a stop token (false: length limit)
    pub stopped: Vec<bool>,
    /// decode steps run (for tokens/s)
    pub steps: usize,
}

/// Generates continuations of every prompt at once. One uniform per sequence per step is drawn
/// from `rng` (also for finished sequences), so a run is reproducible from the seed alone.
/// `on_token(seq, token)` is called as each token is produced (streaming output).
pub fn generate<B: Backend, R: Rng>(
    be: &B,
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    stop_ids: &[u32],
    rng: &mut R,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Generation> {
    let n = prompts.len();
    let vocab = model.cfg.vocab_size;
    let mut tokens = vec![Vec::new(); n];
    let mut stopped = vec![false; n];
    if n == 0 || cfg.max_new_tokens == 0 {
        return Ok(Generation {
            tokens,
            stopped,
            steps: 0,
        });
    }
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let capacity = longest + cfg.max_new_tokens;
    anyhow::ensure!(
        capacity <= model.cfg.max_sequence_len(),
        "prompt ({longest} tokens) + max_new_tokens ({}) exceeds the model's {}",
        cfg.max_new_tokens,
        model.cfg.max_sequence_what()
    );
    let mut decoder = Decoder::new(be, model, n, capacity)?;
    let prefill_logits = decoder.prefill(prompts)?;
    let mut logits = &prefill_logits;
    let mut positions: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut steps = 0;
    loop {
        let uniforms: Vec<f32> = (0..n).map(|_| rng.gen::<f32>()).collect();
        let next = be.sample(
            logits,
            &uniforms,
            n,
            vocab,
            cfg.temperature,
            cfg.top_p,
            cfg.top_k,
        )?;
        let mut all_done = true;
        for (i, &t) in next.iter().enumerate() {
            if stopped[i] || tokens[i].len() >= cfg.max_new_tokens {
                continue;
            }
            tokens[i].push(t);
            on_token(i, t);
            if stop_ids.contains(&t) {
                stopped[i] = true;
            } else if tokens[i].len() < cfg.max_new_tokens {
                all_done = false;
            }
        }
        steps += 1;
        if all_done {
            break;
        }
        // Finished sequences keep decoding a dummy token in their slot (their output is
        // ignored); this keeps slot b == row b and the batch shape fixed.
        let step_tokens: Vec<u32> = (0..n).map(|i| *tokens[i].last().unwrap_or(&0)).collect();
        logits = decoder.step(&step_tokens, &positions)?;
        for (i, p) in positions.iter_mut().enumerate() {
            if (*p as usize) < capacity - 1 && !stopped[i] {
                *p += 1;
            }
        }
    }
    Ok(Generation {
        tokens,
        stopped,
        steps,
    })
}
