//! Fused log-prob head: `z = hidden · Wᵀ / τ` streamed over vocabulary chunks with an online
//! max / log-sum-exp, giving log p(target) and the entropy without ever holding a
//! `[tokens × vocab]` buffer. The backward recomputes each chunk's logits from `lse`.
//! [`fused_logprob_naive`] is the slow composite twin (full softmax) the tests compare against.

use super::linear::{linear_backward_weight, linear_forward};
use rayon::prelude::*;

/// Rows per parallel task in the forward.
const ROW_BLOCK: usize = 32;
/// Scratch budget (floats) of the backward's `[tokens × chunk]` gradient block: the vocabulary
/// chunk shrinks as the token count grows, so memory stays bounded by this, not by tokens×vocab.
const BACKWARD_SCRATCH: usize = 1 << 22;

pub fn forward_chunk() -> usize {
    2048
}

pub fn backward_chunk(n: usize) -> usize {
    (BACKWARD_SCRATCH / n.max(1)).clamp(128, 4096)
}

/// Writes `logp[n]`, `entropy[n]`, `lse[n]`.
#[allow(clippy::too_many_arguments)]
pub fn fused_logprob_forward(
    logp: &mut [f32],
    entropy: &mut [f32],
    lse: &mut [f32],
    hidden: &[f32],
    w: &[f32],
    targets: &[u32],
    n: usize,
    dim: usize,
    vocab: usize,
    temperature: f32,
) {
    let chunk = forward_chunk().min(vocab);
    let inv_t = 1.0 / temperature;
    logp[..n]
        .par_chunks_mut(ROW_BLOCK)
        .zip(entropy[..n].par_chunks_mut(ROW_BLOCK))
        .zip(lse[..n].par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .for_each(|(blk, ((lp, ent), ls))| {
            let rows = lp.len();
            let r0 = blk * ROW_BLOCK;
            let h = &hidden[r0 * dim..(r0 + rows) * dim];
            let mut z = vec![0f32; rows * chunk];
            // online state per row: running max m, s0 = Σ e^(z−m), s1 = Σ e^(z−m)·(z−m), target
            // logit. s1 is taken about the max so the entropy, log s0 − s1/s0, never subtracts
            // two numbers near lse (lse − E[z] loses ~|lse|·2^-24 when the row is peaked).
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut s0 = vec![0f32; rows];
            let mut s1 = vec![0f32; rows];
            let mut zt = vec![0f32; rows];
            let mut c0 = 0;
            while c0 < vocab {
                let c = chunk.min(vocab - c0);
                z.resize(rows * c, 0.0);
                matmul_rows(&mut z, h, &w[c0 * dim..(c0 + c) * dim], rows, dim, c);
                for r in 0..rows {
                    let zr = &mut z[r * c..(r + 1) * c];
                    zr.iter_mut().for_each(|x| *x *= inv_t);
                    let cm = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let nm = m[r].max(cm);
                    let (mut a0, mut a1) = (0f32, 0f32);
                    for &x in zr.iter() {
                        let d = x - nm;
                        let e = d.exp();
                        a0 += e;
                        // e = 0 for a −inf logit, whose d is −inf: it adds nothing (not NaN)
                        if e > 0.0 {
                            a1 += e * d;
                        }
                    }
                    if m[r] == f32::NEG_INFINITY {
                        (s0[r], s1[r]) = (a0, a1);
                    } else {
                        // re-centre the old sums on the new max: e^(z−nm) = e^(z−m)·e^(m−nm)
                        // and z − nm = (z − m) + (m − nm)
                        let shift = m[r] - nm;
                        let rescale = shift.exp();
                        s1[r] = rescale * (s1[r] + shift * s0[r]) + a1;
                        s0[r] = s0[r] * rescale + a0;
                    }
                    m[r] = nm;
                    let t = targets[r0 + r] as usize;
                    if (c0..c0 + c).contains(&t) {
                        zt[r] = zr[t - c0];
                    }
                }
                c0 += c;
            }
            for r in 0..rows {
                let l = m[r] + s0[r].ln();
                ls[r] = l;
                // z_t ≤ max z ≤ lse exactly in real arithmetic; min() only removes a rounding ulp.
                lp[r] = (zt[r] - l).min(0.0);
                ent[r] = s0[r].ln() - s1[r] / s0[r];
            }
        });
}

/// `out[rows, c] = h[rows, dim] · w[c, dim]ᵀ` single-threaded (callers are already parallel).
fn matmul_rows(out: &mut [f32], h: &[f32], w: &[f32], rows: usize, dim: usize, c: usize) {
    // SAFETY: slices cover rows×dim, c×dim and rows×c elements.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            dim,
            c,
            1.0,
            h.as_ptr(),
            dim as isize,
            1,
            w.as_ptr(),
            1,
            dim as isize,
            0.0,
            out.as_mut_ptr(),
            c as isize,
            1,
        );
    }
}

/// Writes `dhidden [n, dim]`, accumulates `dw [vocab, dim]`, for `dlogp [n]`:
/// dz_j = dlogp · (δ_{j,target} − p_j) / τ;  dhidden = dz · W;  dW += dzᵀ · hidden.
#[allow(clippy::too_many_arguments)]
pub fn fused_logprob_backward(
    dhidden: &mut [f32],
    dw: &mut [f32],
    dlogp: &[f32],
    hidden: &[f32],
    w: &[f32],
    targets: &[u32],
    lse: &[f32],
    n: usize,
    dim: usize,
    vocab: usize,
    temperature: f32,
) {
    let chunk = backward_chunk(n).min(vocab);
    let inv_t = 1.0 / temperature;
    dhidden[..n * dim].iter_mut().for_each(|x| *x = 0.0);
    let mut g = vec![0f32; n * chunk];
    let mut c0 = 0;
    while c0 < vocab {
        let c = chunk.min(vocab - c0);
        let wc = &w[c0 * dim..(c0 + c) * dim];
        g.resize(n * c, 0.0);
        linear_forward(&mut g, hidden, wc, None, n, dim, c);
        g.par_chunks_mut(c).enumerate().for_each(|(r, gr)| {
            let (d, l, t) = (dlogp[r], lse[r], targets[r] as usize);
            for (j, x) in gr.iter_mut().enumerate() {
                let p = (*x * inv_t - l).exp();
                let delta = if c0 + j == t { 1.0 } else { 0.0 };
                *x = d * (delta - p) * inv_t;
            }
        });
        // dhidden += G · W_chunk (row blocks in parallel, fixed order per element)
        dhidden[..n * dim]
            .par_chunks_mut(64 * dim)
            .enumerate()
            .for_each(|(blk, dh)| {
                let rows = dh.len() / dim;
                // SAFETY: G rows blk*64.. cover rows×c; W chunk covers c×dim.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        c,
                        dim,
                        1.0,
                        g[blk * 64 * c..].as_ptr(),
                        c as isize,
                        1,
                        wc.as_ptr(),
                        dim as isize,
                        1,
                        1.0,
                        dh.as_mut_ptr(),
                        dim as isize,
                        1,
                    );
                }
            });
        linear_backward_weight(
            &mut dw[c0 * dim..(c0 + c) * dim],
            None,
            &g,
            hidden,
            n,
            dim,
            c,
        );
        c0 += c;
    }
}

/// The slow composite twin: full logits, log_softmax, gather (allocates n × vocab; tests only).
#[allow(clippy::too_many_arguments)]
pub fn fused_logprob_naive(
    hidden: &[f32],
    w: &[f32],
    targets: &[u32],
    n: usize,
    dim: usize,
    vocab: usize,
    temperature: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut logits = vec![0f32; n * vocab];
    linear_forward(&mut logits, hidden, w, None, n, dim, vocab);
    let mut logp = vec![0f32; n];
    let mut ent = vec![0f32; n];
    for r in 0..n {
        let z: Vec<f64> = logits[r * vocab..(r + 1) * vocab]
            .iter()
            .map(|&x| x as f64 / temperature as f64)
            .collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        logp[r] = (z[targets[r] as usize] - lse) as f32;
        ent[r] = -z.iter().map(|x| (x - lse).exp() * (x - lse)).sum::<f64>() as f32;
    }
    (logp, ent)
}
