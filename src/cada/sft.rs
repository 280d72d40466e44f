//! Supervised fine-tuning: cross-entropy on completion tokens (DA's first stage, e.g. on
//! judge-approved self-generated chains), through the same fused log-prob as GRPO.

use super::seqlogp::{check_grads, completion_mask, seq_backward, seq_logprobs, Seq};
use crate::backend::Backend;
use crate::model::llama::Llama;
use crate::model::weights::Params;
use crate::train::optimizer::{AdamW, AdamWConfig};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// One SFT example: a sequence and, for assistant-only loss, which of its completion tokens
/// count (1) and which do not (0: e.g. the user turns between assistant ones).
#[derive(Clone, Debug)]
pub struct SftExample {
    pub seq: Seq,
    pub loss_mask: Option<Vec<f32>>,
}

impl From<Seq> for SftExample {
    fn from(seq: Seq) -> Self {
        SftExample {
            seq,
            loss_mask: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SftConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub optim: AdamWConfig,
}

/// Per-step record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SftLog {
    pub step: usize,
    pub loss: f32,
    pub tokens: usize,
    pub grad_norm: f32,
    pub lr: f32,
    pub tokens_per_s: f64,
}

/// Mean over all counted completion tokens of the batch of −log p (token-level mean).
pub fn sft_train<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    data: &[SftExample],
    cfg: &SftConfig,
    mut on_step: impl FnMut(&SftLog),
) -> Result<Vec<SftLog>> {
    anyhow::ensure!(!data.is_empty(), "sft: no training examples");
    anyhow::ensure!(cfg.batch_size > 0, "sft: batch_size must be > 0");
    let names: Vec<String> = Params::spec(&model.cfg)
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let lens: Vec<usize> = model.params.tensors().iter().map(|t| be.len(t)).collect();
    let mut opt = AdamW::new(be, &lens, cfg.optim)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut rng);
    let mut pos = 0;
    let mut logs = Vec::new();
    for step in 1..=cfg.steps {
        let t0 = std::time::Instant::now();
        let mut batch = Vec::with_capacity(cfg.batch_size);
        let mut masks = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size.min(data.len()) {
            if pos == order.len() {
                order.shuffle(&mut rng);
                pos = 0;
            }
            batch.push(data[order[pos]].seq.clone());
            masks.push(data[order[pos]].loss_mask.as_deref());
            pos += 1;
        }
        let sl = seq_logprobs(be, model, &batch, 1.0)?;
        let mut mask = completion_mask(&batch, sl.lc);
        for (b, lm) in masks.iter().enumerate() {
            if let Some(lm) = lm {
                for (m, &keep) in mask[b * sl.lc..].iter_mut().zip(lm.iter()) {
                    *m *= keep;
                }
            }
        }
        let ntok: f32 = mask.iter().sum();
        anyhow::ensure!(
            ntok > 0.0,
            "sft step {step}: the batch has no completion tokens"
        );
        let loss = -sl
            .logp
            .iter()
            .zip(&mask)
            .map(|(l, m)| (l * m) as f64)
            .sum::<f64>() as f32
            / ntok;
        anyhow::ensure!(
            loss.is_finite(),
            "sft step {step}: loss is {loss} (non-finite); update refused"
        );
        let dlogp: Vec<f32> = mask.iter().map(|m| -m / ntok).collect();
        let mut grads = model.zeros_like_params(be)?;
        seq_backward(be, model, &sl, &batch, &dlogp, 1.0, &mut grads)?;
        check_grads(be, &names, &grads, step)?;
        let mut params = model.params.tensors_mut();
        let mut gs = grads.tensors_mut();
        let info = opt.step(be, &mut params, &mut gs)?;
        let tokens: usize = batch.iter().map(|s| s.ctx.len() + s.completion.len()).sum();
        let log = SftLog {
            step,
            loss,
            tokens: ntok as usize,
            grad_norm: info.grad_norm,
            lr: info.lr,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64(),
        };
        on_step(&log);
        logs.push(log);
    }
    Ok(logs)
}
