//! Log-probs of completions given contexts, through the fused head, and their backward: the one
//! path shared by GRPO, SFT, DPO, scoring and the model judge.

use crate::backend::Backend;
use crate::model::llama::{shifted_targets, Forward, Llama};
use crate::model::weights::Params;
use anyhow::Result;

/// A context (prompt in its chat rendering) followed by the completion tokens being scored.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    pub ctx: Vec<u32>,
    pub completion: Vec<u32>,
}

/// Per-token log-probs of a batch of [`Seq`], laid out `[rows, lc]` (lc = longest completion),
/// plus what the backward needs (`None` from [`seq_logprobs_no_grad`]).
pub struct SeqLogprobs<B: Backend> {
    saved: Option<(Forward<B>, B::Ids, B::Buf)>,
    pub seq: usize,
    pub lc: usize,
    pub logp: Vec<f32>,
    pub entropy: Vec<f32>,
}

/// Forward + fused log-prob over right-padded rows; completion token j of row b sits at
/// position ctx_len + j and is predicted from position ctx_len + j − 1.
pub fn seq_logprobs<B: Backend>(
    be: &B,
    model: &Llama<B>,
    seqs: &[Seq],
    temperature: f32,
) -> Result<SeqLogprobs<B>> {
    let (ids, rows, seq) = padded_ids(seqs)?;
    let fwd = model.forward(be, &ids, rows, seq)?;
    let targets = be.upload_ids(&shifted_targets(&ids, rows, seq))?;
    let (logp, ent, lse) = model.token_logprobs(be, &fwd, &targets, temperature)?;
    let mut out = per_completion(be, seqs, seq, &logp, &ent)?;
    out.saved = Some((fwd, targets, lse));
    Ok(out)
}

/// [`seq_logprobs`] without saving anything for a backward (the reference model, scoring):
/// the inference forward, one layer's activations at a time. The same log-probs.
pub fn seq_logprobs_no_grad<B: Backend>(
    be: &B,
    model: &Llama<B>,
    seqs: &[Seq],
    temperature: f32,
) -> Result<SeqLogprobs<B>> {
    let (ids, rows, seq) = padded_ids(seqs)?;
    let hidden = model.forward_inference(be, &ids, rows, seq, |_, _, _| Ok(()))?;
    let targets = be.upload_ids(&shifted_targets(&ids, rows, seq))?;
    let (logp, ent, _) = model.hidden_logprobs(be, &hidden, rows * seq, &targets, temperature)?;
    per_completion(be, seqs, seq, &logp, &ent)
}

/// The right-padded ids `[rows, seq]` of a batch, with rows and seq.
fn padded_ids(seqs: &[Seq]) -> Result<(Vec<u32>, usize, usize)> {
    anyhow::ensure!(!seqs.is_empty(), "seq_logprobs: empty batch");
    anyhow::ensure!(
        seqs.iter().all(|s| !s.ctx.is_empty()),
        "seq_logprobs: a context is empty"
    );
    let rows = seqs.len();
    let seq = seqs
        .iter()
        .map(|s| s.ctx.len() + s.completion.len())
        .max()
        .unwrap_or(1);
    let mut ids = vec![0u32; rows * seq];
    for (b, s) in seqs.iter().enumerate() {
        let row = &mut ids[b * seq..(b + 1) * seq];
        row[..s.ctx.len()].copy_from_slice(&s.ctx);
        row[s.ctx.len()..s.ctx.len() + s.completion.len()].copy_from_slice(&s.completion);
    }
    Ok((ids, rows, seq))
}

/// Per-position log-probs and entropies `[rows, seq]` laid out per completion `[rows, lc]`.
fn per_completion<B: Backend>(
    be: &B,
    seqs: &[Seq],
    seq: usize,
    logp: &B::Buf,
    ent: &B::Buf,
) -> Result<SeqLogprobs<B>> {
    let lc = seqs
        .iter()
        .map(|s| s.completion.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let (logp_h, ent_h) = (be.download(logp)?, be.download(ent)?);
    let rows = seqs.len();
    let mut lp = vec![0f32; rows * lc];
    let mut entropy = vec![0f32; rows * lc];
    for (b, s) in seqs.iter().enumerate() {
        let p = s.ctx.len();
        for j in 0..s.completion.len() {
            lp[b * lc + j] = logp_h[b * seq + p + j - 1];
            entropy[b * lc + j] = ent_h[b * seq + p + j - 1];
        }
    }
    Ok(SeqLogprobs {
        saved: None,
        seq,
        lc,
        logp: lp,
        entropy,
    })
}

/// Accumulates parameter gradients for `dlogp [rows, lc]` (d loss / d completion log-probs).
pub fn seq_backward<B: Backend>(
    be: &B,
    model: &Llama<B>,
    sl: &SeqLogprobs<B>,
    seqs: &[Seq],
    dlogp: &[f32],
    temperature: f32,
    grads: &mut Params<B::Buf>,
) -> Result<()> {
    anyhow::ensure!(
        dlogp.len() == seqs.len() * sl.lc,
        "seq_backward: dlogp has {} values for {}×{}",
        dlogp.len(),
        seqs.len(),
        sl.lc
    );
    let mut dfull = vec![0f32; seqs.len() * sl.seq];
    for (b, s) in seqs.iter().enumerate() {
        let p = s.ctx.len();
        for j in 0..s.completion.len() {
            dfull[b * sl.seq + p + j - 1] = dlogp[b * sl.lc + j];
        }
    }
    let (fwd, targets, lse) = sl.saved.as_ref().ok_or_else(|| {
        anyhow::anyhow!("seq_backward: these log-probs were computed without saving for a backward")
    })?;
    let d_full = be.upload(&dfull)?;
    model.logprob_backward(be, fwd, targets, lse, &d_full, temperature, grads)
}

/// The completion mask `[rows, lc]` (1 on real completion tokens).
pub fn completion_mask(seqs: &[Seq], lc: usize) -> Vec<f32> {
    let mut mask = vec![0f32; seqs.len() * lc];
    for (b, s) in seqs.iter().enumerate() {
        for j in 0..s.completion.len() {
            mask[b * lc + j] = 1.0;
        }
    }
    mask
}

/// Checks every gradient for NaN/Inf, naming the tensor.
pub fn check_grads<B: Backend>(
    be: &B,
    names: &[String],
    grads: &Params<B::Buf>,
    step: usize,
) -> Result<()> {
    for (name, g) in names.iter().zip(grads.tensors()) {
        if !be.all_finite(g)? {
            anyhow::bail!("step {step}: gradient of `{name}` holds NaN/Inf; update refused, last checkpoint kept");
        }
    }
    Ok(())
}
