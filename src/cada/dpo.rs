//! DPO (sigmoid loss against a frozen reference) on chosen/rejected pairs:
//! L = −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]), π = Σ log-probs of the completion tokens.

use super::seqlogp::{
    check_grads, completion_mask, seq_backward, seq_logprobs, seq_logprobs_no_grad, Seq,
};
use crate::backend::Backend;
use crate::model::llama::Llama;
use crate::model::weights::Params;
use crate::train::optimizer::{AdamW, AdamWConfig};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Clone, Debug)]
pub struct DpoPair {
    pub chosen: Seq,
    pub rejected: Seq,
}

#[derive(Clone, Debug)]
pub struct DpoConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub beta: f32,
    pub seed: u64,
    pub optim: AdamWConfig,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DpoLog {
    pub step: usize,
    pub loss: f32,
    /// share of pairs whose implicit reward prefers the chosen completion
    pub accuracy: f32,
    pub margin: f32,
    pub grad_norm: f32,
}

fn row_sums(logp: &[f32], mask: &[f32], rows: usize, lc: usize) -> Vec<f64> {
    (0..rows)
        .map(|b| {
            (0..lc)
                .map(|j| (logp[b * lc + j] * mask[b * lc + j]) as f64)
                .sum()
        })
        .collect()
}

/// Loss, accuracy, margin and d(loss)/d(Σ log-prob) for chosen and rejected rows.
pub fn dpo_loss(
    pol_c: &[f64],
    pol_r: &[f64],
    ref_c: &[f64],
    ref_r: &[f64],
    beta: f32,
) -> (f32, f32, f32, Vec<f32>, Vec<f32>) {
    let n = pol_c.len() as f64;
    let (mut loss, mut acc, mut margin) = (0.0, 0.0, 0.0);
    let (mut dc, mut dr) = (Vec::new(), Vec::new());
    for i in 0..pol_c.len() {
        let z = beta as f64 * ((pol_c[i] - ref_c[i]) - (pol_r[i] - ref_r[i]));
        // −log σ(z) = softplus(−z), computed stably
        loss += if z > 0.0 {
            (-z).exp().ln_1p()
        } else {
            -z + z.exp().ln_1p()
        };
        acc += (z > 0.0) as u8 as f64;
        margin += z / beta as f64;
        let sig_neg = 1.0 / (1.0 + z.exp()); // σ(−z)
        dc.push((-beta as f64 * sig_neg / n) as f32);
        dr.push((beta as f64 * sig_neg / n) as f32);
    }
    (
        (loss / n) as f32,
        (acc / n) as f32,
        (margin / n) as f32,
        dc,
        dr,
    )
}

pub fn dpo_train<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    reference: &Llama<B>,
    data: &[DpoPair],
    cfg: &DpoConfig,
    mut on_step: impl FnMut(&DpoLog),
) -> Result<Vec<DpoLog>> {
    anyhow::ensure!(!data.is_empty(), "dpo: no training pairs");
    let names: Vec<String> = Params::spec(&model.cfg)
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let lens: Vec<usize> = model.params.tensors().iter().map(|t| be.len(t)).collect();
    let mut opt = AdamW::new(be, &lens, cfg.optim)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut pos = order.len();
    let mut logs = Vec::new();
    for step in 1..=cfg.steps {
        let mut rows: Vec<Seq> = Vec::new();
        let mut rejected: Vec<Seq> = Vec::new();
        while rows.len() < cfg.batch_size.min(data.len()) {
            if pos == order.len() {
                order.shuffle(&mut rng);
                pos = 0;
            }
            rows.push(data[order[pos]].chosen.clone());
            rejected.push(data[order[pos]].rejected.clone());
            pos += 1;
        }
        let n = rows.len();
        rows.extend(rejected); // rows 0..n chosen, n..2n rejected
        let sl = seq_logprobs(be, model, &rows, 1.0)?;
        let mask = completion_mask(&rows, sl.lc);
        let pol = row_sums(&sl.logp, &mask, 2 * n, sl.lc);
        let rl = seq_logprobs_no_grad(be, reference, &rows, 1.0)?;
        let refs = row_sums(&rl.logp, &completion_mask(&rows, rl.lc), 2 * n, rl.lc);
        let (loss, accuracy, margin, dc, dr) =
            dpo_loss(&pol[..n], &pol[n..], &refs[..n], &refs[n..], cfg.beta);
        anyhow::ensure!(
            loss.is_finite(),
            "dpo step {step}: loss is {loss} (non-finite); update refused"
        );
        let mut dlogp = vec![0f32; 2 * n * sl.lc];
        for b in 0..2 * n {
            let g = if b < n { dc[b] } else { dr[b - n] };
            for j in 0..sl.lc {
                dlogp[b * sl.lc + j] = g * mask[b * sl.lc + j];
            }
        }
        let mut grads = model.zeros_like_params(be)?;
        seq_backward(be, model, &sl, &rows, &dlogp, 1.0, &mut grads)?;
        check_grads(be, &names, &grads, step)?;
        let mut params = model.params.tensors_mut();
        let mut gs = grads.tensors_mut();
        let info = opt.step(be, &mut params, &mut gs)?;
        let log = DpoLog {
            step,
            loss,
            accuracy,
            margin,
            grad_norm: info.grad_norm,
        };
        on_step(&log);
        logs.push(log);
    }
    Ok(logs)
}
