//! GRPO loss, f32 CPU reference (the oracle for `kernels/grpo_loss.cu`).
//!
//! Per completion token t of completion b (../shared/CADA.md, step 7):
//! - ratio      `ρ = exp(logp − old_logp)`
//! - surrogate  `S = −min(ρ·A_b, clip(ρ, 1−ε_low, 1+ε_high)·A_b)`
//! - k3 KL      `KL = exp(ref − logp) − (ref − logp) − 1`, added as `β·KL`; with β = 0 the
//!   reference log-probs are never read (the buffer may have any length, even 0)
//! - token loss `L = S + β·KL`
//!
//! Aggregation, with `m` the mask (1 = counted, 0 = padding / masked out):
//! - `grpo`:    `(1/B) Σ_b [ Σ_t m·L / max(Σ_t m, 1) ]` — a completion with no unmasked token
//!   contributes 0 but still counts in the `1/B` (as TRL: per-sequence count clamped to ≥ 1,
//!   divided by the number of sequences), so masking a completion never re-weights the others;
//! - `dapo`/`bnpo`: `Σ m·L / max(Σ m, 1)`;
//! - `dr_grpo`: `Σ m·L / (B · max_completion_len)`.
//!
//! Every aggregation is `Σ_{b,t} w_{b,t}·L_{b,t}` with a per-token weight `w` that does not
//! depend on the log-probs, so forward and backward share `token_weights` and the backward
//! is `dlogp = w · dL/dlogp` token by token.
//!
//! With `ImportanceSampling::Sequence` (GSPO; TRL's `importance_sampling_level="sequence"`) the
//! ratio is one per completion, `ρ_b = exp(s_b)`, `s_b = Σ_t m·(logp − old) / max(Σ_t m, 1)`,
//! and every token of completion b carries the same surrogate `S_b` (the KL stays per token).
//! `S_b` depends on all of b's log-probs: `dS_b/dlogp_t = dS_b/ds_b · m_t / max(Σ m, 1)`, so the
//! backward spreads `W_b · dS_b/ds_b` (`W_b = Σ_t w_{b,t}`) over the row. The clip metrics are
//! then shares of completions (clipped ones over all B, fully masked ones included), as TRL logs
//! them; per token otherwise.
//!
//! Per-token quantities are computed in f32 (as the kernel does); sums are accumulated in f64.

use crate::backend::{GrpoLossConfig, GrpoLossMetrics, ImportanceSampling, LossType};
use anyhow::{bail, ensure, Result};

/// Checks shapes and knobs before a call; the two ops themselves assume valid inputs (and
/// panic on mismatched slice lengths, which is a programming error once this has passed).
/// `what` names the caller's context for the message (e.g. "grpo_loss_forward").
#[allow(clippy::too_many_arguments)]
pub fn check_grpo_inputs(
    what: &str,
    logp_len: usize,
    old_logp_len: usize,
    ref_logp_len: usize,
    mask_len: usize,
    advantages_len: usize,
    batch: usize,
    len: usize,
    cfg: &GrpoLossConfig,
) -> Result<()> {
    let tokens = batch * len;
    for (field, got) in [
        ("logp", logp_len),
        ("old_logp", old_logp_len),
        ("mask", mask_len),
    ] {
        ensure!(
            got == tokens,
            "{what}: `{field}` has {got} values, expected batch {batch} × len {len} = {tokens}"
        );
    }
    // With β = 0 the reference model is skipped entirely, so its buffer may be a dummy.
    if cfg.beta != 0.0 {
        ensure!(
            ref_logp_len == tokens,
            "{what}: `ref_logp` has {ref_logp_len} values, expected {tokens} (beta = {} needs reference log-probs)",
            cfg.beta
        );
    }
    ensure!(
        advantages_len == batch,
        "{what}: `advantages` has {advantages_len} values, expected batch = {batch}"
    );
    for (field, value) in [
        ("epsilon_low", cfg.epsilon_low),
        ("epsilon_high", cfg.epsilon_high),
        ("beta", cfg.beta),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            bail!("{what}: config field `{field}` = {value} must be finite and ≥ 0");
        }
    }
    ensure!(
        cfg.epsilon_low < 1.0,
        "{what}: config field `epsilon_low` = {} must be < 1 (the lower clip bound 1−ε_low must stay positive)",
        cfg.epsilon_low
    );
    if let Some(delta) = cfg.delta {
        ensure!(
            delta.is_finite() && delta > 1.0 + cfg.epsilon_high,
            "{what}: config field `delta` = {delta} must be finite and > 1 + epsilon_high = {} (the cap sits above the clip range)",
            1.0 + cfg.epsilon_high
        );
    }
    if cfg.loss_type == LossType::DrGrpo {
        ensure!(
            cfg.max_completion_len > 0,
            "{what}: config field `max_completion_len` must be > 0 for loss_type dr_grpo"
        );
    }
    Ok(())
}

/// Per-token aggregation weights `w[b·len + t]` such that `loss = Σ w·L` (see module doc).
fn token_weights(mask: &[f32], batch: usize, len: usize, cfg: &GrpoLossConfig) -> Vec<f64> {
    let mut weights = vec![0.0f64; batch * len];
    match cfg.loss_type {
        LossType::Grpo => {
            for b in 0..batch {
                let row = b * len..(b + 1) * len;
                let count: f64 = mask[row.clone()].iter().map(|&m| m as f64).sum();
                let denom = count.max(1.0) * batch as f64;
                for i in row {
                    weights[i] = mask[i] as f64 / denom;
                }
            }
        }
        LossType::Dapo | LossType::DrGrpo => {
            let denom = if cfg.loss_type == LossType::Dapo {
                let count: f64 = mask.iter().map(|&m| m as f64).sum();
                count.max(1.0)
            } else {
                // check_grpo_inputs rejects 0; the max keeps an unchecked call finite.
                (batch * cfg.max_completion_len.max(1)) as f64
            };
            for (w, &m) in weights.iter_mut().zip(mask) {
                *w = m as f64 / denom;
            }
        }
    }
    weights
}

/// Everything one token contributes, in f32.
struct TokenTerms {
    /// `S + β·KL`
    loss: f32,
    /// k3 KL (0 when β = 0)
    kl: f32,
    /// d(S + β·KL)/d(logp)
    dloss: f32,
    clipped_low: bool,
    clipped_high: bool,
}

/// The clipped surrogate of one ratio `ρ = exp(log_ratio)` and advantage: (S, dS/d log_ratio,
/// clipped low, clipped high). With δ the unclipped branch is `min(ρ, δ)·A`.
fn surrogate_terms(log_ratio: f32, advantage: f32, cfg: &GrpoLossConfig) -> (f32, f32, bool, bool) {
    let ratio = log_ratio.exp();
    let clipped_ratio = ratio.clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high);
    let capped = cfg.delta.is_some_and(|d| ratio > d);
    let unclipped = cfg.delta.map_or(ratio, |d| ratio.min(d)) * advantage;
    let clipped = clipped_ratio * advantage;
    // The clipped branch is the smaller one exactly in these two cases; there its value is
    // constant in logp, so the surrogate's gradient vanishes. Above δ (> 1 + ε_high) the
    // unclipped branch is the constant δ·A: no gradient either.
    let clipped_low = ratio < 1.0 - cfg.epsilon_low && advantage < 0.0;
    let clipped_high = ratio > 1.0 + cfg.epsilon_high && advantage > 0.0;
    let surrogate = -unclipped.min(clipped);
    // d(−ρA)/d(log ρ) = −ρA.
    let dsurrogate = if clipped_low || clipped_high || capped {
        0.0
    } else {
        -unclipped
    };
    (surrogate, dsurrogate, clipped_low, clipped_high)
}

/// One token's terms; `seq` = `Some((s_b, 1 / max(Σ m, 1)))` in sequence mode, where the
/// surrogate is the completion's and `dloss` holds only the KL's part (the surrogate's is
/// spread over the row by the backward).
fn token_terms(
    logp: f32,
    old_logp: f32,
    ref_logp: f32,
    advantage: f32,
    cfg: &GrpoLossConfig,
    seq: Option<f32>,
) -> TokenTerms {
    let log_ratio = seq.unwrap_or(logp - old_logp);
    let (surrogate, dsurrogate, clipped_low, clipped_high) =
        surrogate_terms(log_ratio, advantage, cfg);
    let (kl, dkl) = if cfg.beta != 0.0 {
        let delta = ref_logp - logp;
        let e = delta.exp();
        // d(e^δ − δ − 1)/d(logp) with δ = ref − logp: −e^δ + 1
        (e - delta - 1.0, 1.0 - e)
    } else {
        (0.0, 0.0)
    };
    let dsurrogate = if seq.is_some() { 0.0 } else { dsurrogate };
    TokenTerms {
        loss: surrogate + cfg.beta * kl,
        kl,
        dloss: dsurrogate + cfg.beta * dkl,
        clipped_low,
        clipped_high,
    }
}

/// Sequence mode: completion b's mean log-ratio `s_b` over its unmasked tokens (None in token
/// mode), in f64, then f32 as the kernel.
fn sequence_log_ratio(
    logp: &[f32],
    old_logp: &[f32],
    mask: &[f32],
    b: usize,
    len: usize,
    cfg: &GrpoLossConfig,
) -> Option<f32> {
    if cfg.importance_sampling == ImportanceSampling::Token {
        return None;
    }
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for i in b * len..(b + 1) * len {
        if mask[i] != 0.0 {
            sum += mask[i] as f64 * (logp[i] - old_logp[i]) as f64;
            count += mask[i] as f64;
        }
    }
    Some((sum / count.max(1.0)) as f32)
}

/// The aggregated loss and its metrics over `[batch, len]` right-padded token grids.
/// Metrics other than `loss` are mask-weighted means over unmasked tokens (0 when there are
/// none); `kl_mean` is 0 when β = 0. Call [`check_grpo_inputs`] first.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss_forward(
    logp: &[f32],
    old_logp: &[f32],
    ref_logp: &[f32],
    mask: &[f32],
    advantages: &[f32],
    batch: usize,
    len: usize,
    cfg: &GrpoLossConfig,
) -> GrpoLossMetrics {
    let tokens = batch * len;
    assert!(logp.len() == tokens && old_logp.len() == tokens && mask.len() == tokens);
    assert!(advantages.len() == batch);
    let weights = token_weights(mask, batch, len, cfg);

    let (mut loss, mut kl_sum, mut low, mut high, mut count) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let per_completion = cfg.importance_sampling == ImportanceSampling::Sequence;
    let (mut rows_low, mut rows_high) = (0.0f64, 0.0f64);
    for (b, &advantage) in advantages.iter().enumerate() {
        let seq = sequence_log_ratio(logp, old_logp, mask, b, len, cfg);
        let (mut row_low, mut row_high) = (false, false);
        for i in b * len..(b + 1) * len {
            let m = mask[i] as f64;
            if m == 0.0 {
                continue; // padding: its log-probs may be garbage and must not leak in as NaN
            }
            let reference = if cfg.beta != 0.0 { ref_logp[i] } else { 0.0 };
            let terms = token_terms(logp[i], old_logp[i], reference, advantage, cfg, seq);
            loss += weights[i] * terms.loss as f64;
            kl_sum += m * terms.kl as f64;
            low += m * terms.clipped_low as u8 as f64;
            high += m * terms.clipped_high as u8 as f64;
            row_low |= terms.clipped_low;
            row_high |= terms.clipped_high;
            count += m;
        }
        rows_low += row_low as u8 as f64;
        rows_high += row_high as u8 as f64;
    }
    let mean = |sum: f64| {
        if count > 0.0 {
            (sum / count) as f32
        } else {
            0.0
        }
    };
    let (clip_low, clip_high) = if per_completion {
        let rows = batch.max(1) as f64;
        ((rows_low / rows) as f32, (rows_high / rows) as f32)
    } else {
        (mean(low), mean(high))
    };
    GrpoLossMetrics {
        loss: loss as f32,
        kl_mean: mean(kl_sum),
        clip_ratio_low: clip_low,
        clip_ratio_high: clip_high,
        // The two cases are disjoint (they need A < 0 and A > 0), so the union is the sum.
        clip_ratio_region: if per_completion {
            ((rows_low + rows_high) / batch.max(1) as f64) as f32
        } else {
            mean(low + high)
        },
        tokens: count as f32,
    }
}

/// Writes `dlogp[b·len + t] = d(loss)/d(logp[b·len + t])`; masked tokens get exactly 0.
/// Call [`check_grpo_inputs`] first.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss_backward(
    dlogp: &mut [f32],
    logp: &[f32],
    old_logp: &[f32],
    ref_logp: &[f32],
    mask: &[f32],
    advantages: &[f32],
    batch: usize,
    len: usize,
    cfg: &GrpoLossConfig,
) {
    let tokens = batch * len;
    assert!(
        dlogp.len() == tokens
            && logp.len() == tokens
            && old_logp.len() == tokens
            && mask.len() == tokens
    );
    assert!(advantages.len() == batch);
    let weights = token_weights(mask, batch, len, cfg);
    for (b, &advantage) in advantages.iter().enumerate() {
        let row = b * len..(b + 1) * len;
        let seq = sequence_log_ratio(logp, old_logp, mask, b, len, cfg);
        // sequence mode: W_b · dS_b/ds_b / max(Σ m, 1), each token's share m_t of it
        let spread = seq.map(|s| {
            let (_, ds, _, _) = surrogate_terms(s, advantage, cfg);
            let count: f64 = mask[row.clone()].iter().map(|&m| m as f64).sum();
            let w_row: f64 = weights[row.clone()].iter().sum();
            w_row * ds as f64 / count.max(1.0)
        });
        for i in row {
            if mask[i] == 0.0 {
                dlogp[i] = 0.0;
                continue;
            }
            let reference = if cfg.beta != 0.0 { ref_logp[i] } else { 0.0 };
            let terms = token_terms(logp[i], old_logp[i], reference, advantage, cfg, seq);
            let own = weights[i] * terms.dloss as f64;
            dlogp[i] = match spread {
                None => own as f32,
                Some(g) => (own + g * mask[i] as f64) as f32,
            };
        }
    }
}
