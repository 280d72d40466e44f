//! Generating answers to a prompt set and measuring harmful compliance and over-refusal
//! (../shared/CADA.md, "Evaluation"). Prompts are answered in the raw context (no codes, no
//! cases): what the trained model does on its own.

use super::chat_data::context_ids;
use super::data::PromptItem;
use super::eval::{evaluate_completions, EvalReport};
use crate::backend::Backend;
use crate::model::llama::Llama;
use crate::model::load::LoadedModel;
use crate::train::generate::{generate, SamplingConfig};
use anyhow::Result;
use rand::SeedableRng;

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// 0 = greedy
    pub temperature: f32,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// completions per prompt (with temperature > 0 the rates estimate the policy's probabilities)
    pub samples: usize,
}

/// Completions (text, stop token removed) for each prompt, in batches.
pub fn complete_prompts<B: Backend>(
    be: &B,
    model: &Llama<B>,
    base: &LoadedModel,
    items: &[PromptItem],
    opts: &EvalOptions,
) -> Result<Vec<String>> {
    let stops = base.stop_ids();
    let sampling = SamplingConfig {
        temperature: opts.temperature,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: opts.max_new_tokens,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(opts.batch_size.max(1)) {
        let ctx: Vec<Vec<u32>> = chunk
            .iter()
            .map(|it| context_ids(base, None, it))
            .collect::<Result<_>>()?;
        let gen = generate(be, model, &ctx, &sampling, &stops, &mut rng, |_, _| {})?;
        for toks in gen.tokens {
            let visible: Vec<u32> = toks.into_iter().filter(|t| !stops.contains(t)).collect();
            out.push(base.tokenizer.decode(&visible, true)?);
        }
    }
    Ok(out)
}

pub fn evaluate_model<B: Backend>(
    be: &B,
    model: &Llama<B>,
    base: &LoadedModel,
    items: &[PromptItem],
    opts: &EvalOptions,
) -> Result<EvalReport> {
    anyhow::ensure!(!items.is_empty(), "eval: no prompts");
    let repeated: Vec<PromptItem> = items
        .iter()
        .flat_map(|it| std::iter::repeat_n(it.clone(), opts.samples.max(1)))
        .collect();
    let completions = complete_prompts(be, model, base, &repeated, opts)?;
    Ok(evaluate_completions(&repeated, &completions))
}
