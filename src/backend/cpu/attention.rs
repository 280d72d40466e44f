//! Causal grouped-query attention (training), and single-token decode attention over a KV cache.
//! Plain per-row softmax: on the CPU the [T × T] scores of one head are never stored either — each
//! query row is computed, used and dropped. The backward recomputes probabilities from `lse`.

use crate::backend::{AttnShape, DecodeShape};
use rayon::prelude::*;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Writes `out [B·T, Hq·hd]` and `lse [B, Hq, T]`.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
) {
    let AttnShape {
        batch,
        seq,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = s;
    let (qs, ks) = (n_heads * hd, n_kv_heads * hd);
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // one task per (b, h): its output rows [T, hd] and lse [T]
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * n_heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / n_heads, bh % n_heads);
            let kh = h / group;
            let mut o = vec![0f32; seq * hd];
            let mut l = vec![0f32; seq];
            let mut scores = vec![0f32; seq];
            for t in 0..seq {
                let qt = &q[(b * seq + t) * qs + h * hd..][..hd];
                let mut m = f32::NEG_INFINITY;
                for j in 0..=t {
                    let sc = dot(qt, &k[(b * seq + j) * ks + kh * hd..][..hd]) * scale;
                    scores[j] = sc;
                    m = m.max(sc);
                }
                let mut sum = 0f32;
                let ot = &mut o[t * hd..(t + 1) * hd];
                for j in 0..=t {
                    let p = (scores[j] - m).exp();
                    sum += p;
                    let vj = &v[(b * seq + j) * ks + kh * hd..][..hd];
                    ot.iter_mut().zip(vj).for_each(|(a, x)| *a += p * x);
                }
                ot.iter_mut().for_each(|a| *a /= sum);
                l[t] = m + sum.ln();
            }
            (o, l)
        })
        .collect();
    for (bh, (o, l)) in results.into_iter().enumerate() {
        let (b, h) = (bh / n_heads, bh % n_heads);
        for t in 0..seq {
            out[(b * seq + t) * qs + h * hd..][..hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
        }
        lse[(b * n_heads + h) * seq..][..seq].copy_from_slice(&l);
    }
}

/// Writes `dq, dk, dv`. One task per (b, kv head) so the GQA sums into dk/dv need no locks.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
) {
    let AttnShape {
        batch,
        seq,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = s;
    let (qs, ks) = (n_heads * hd, n_kv_heads * hd);
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);
    let results: Vec<Grads> = (0..batch * n_kv_heads)
        .into_par_iter()
        .map(|bk| {
            let (b, kh) = (bk / n_kv_heads, bk % n_kv_heads);
            let mut gq = vec![0f32; group * seq * hd];
            let mut gk = vec![0f32; seq * hd];
            let mut gv = vec![0f32; seq * hd];
            for g in 0..group {
                let h = kh * group + g;
                for t in 0..seq {
                    let row = (b * seq + t) * qs + h * hd;
                    let (qt, dot_t) = (&q[row..row + hd], &dout[row..row + hd]);
                    // D_t = Σ_d dout·out: the softmax backward's row term
                    let d_t = dot(dot_t, &out[row..row + hd]);
                    let l = lse[(b * n_heads + h) * seq + t];
                    let gqt = &mut gq[(g * seq + t) * hd..][..hd];
                    for j in 0..=t {
                        let kj = &k[(b * seq + j) * ks + kh * hd..][..hd];
                        let vj = &v[(b * seq + j) * ks + kh * hd..][..hd];
                        let p = (dot(qt, kj) * scale - l).exp();
                        let dp = dot(dot_t, vj);
                        let ds = p * (dp - d_t) * scale;
                        gqt.iter_mut().zip(kj).for_each(|(a, x)| *a += ds * x);
                        gk[j * hd..(j + 1) * hd]
                            .iter_mut()
                            .zip(qt)
                            .for_each(|(a, x)| *a += ds * x);
                        gv[j * hd..(j + 1) * hd]
                            .iter_mut()
                            .zip(dot_t)
                            .for_each(|(a, x)| *a += p * x);
                    }
                }
            }
            (gq, gk, gv)
        })
        .collect();
    for (bk, (gq, gk, gv)) in results.into_iter().enumerate() {
        let (b, kh) = (bk / n_kv_heads, bk % n_kv_heads);
        for t in 0..seq {
            for g in 0..group {
                let h = kh * group + g;
                dq[(b * seq + t) * qs + h * hd..][..hd]
                    .copy_from_slice(&gq[(g * seq + t) * hd..][..hd]);
            }
            dk[(b * seq + t) * ks + kh * hd..][..hd].copy_from_slice(&gk[t * hd..(t + 1) * hd]);
            dv[(b * seq + t) * ks + kh * hd..][..hd].copy_from_slice(&gv[t * hd..(t + 1) * hd]);
        }
    }
}

/// Row `b` of `k, v [batch, Hkv·hd]` goes to slot `b`, position `positions[b]`.
pub fn kv_cache_write(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    k: &[f32],
    v: &[f32],
    positions: &[u32],
    s: DecodeShape,
) {
    let kvd = s.n_kv_heads * s.head_dim;
    for b in 0..s.batch {
        let dst = (b * s.capacity + positions[b] as usize) * kvd;
        k_cache[dst..dst + kvd].copy_from_slice(&k[b * kvd..(b + 1) * kvd]);
        v_cache[dst..dst + kvd].copy_from_slice(&v[b * kvd..(b + 1) * kvd]);
    }
}

/// `q [batch, Hq·hd]` attends to positions `0..=positions[b]` of slot `b`.
pub fn decode_attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    positions: &[u32],
    s: DecodeShape,
) {
    let DecodeShape {
        batch,
        capacity,
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = s;
    let (qs, kvd) = (n_heads * hd, n_kv_heads * hd);
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out[..batch * qs]
        .par_chunks_mut(qs)
        .enumerate()
        .for_each(|(b, orow)| {
            let len = positions[b] as usize + 1;
            let mut scores = vec![0f32; len];
            for h in 0..n_heads {
                let kh = h / group;
                let qh = &q[b * qs + h * hd..][..hd];
                let mut m = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    *sc = dot(qh, &k_cache[(b * capacity + j) * kvd + kh * hd..][..hd]) * scale;
                    m = m.max(*sc);
                }
                let o = &mut orow[h * hd..(h + 1) * hd];
                o.iter_mut().for_each(|x| *x = 0.0);
                let mut sum = 0f32;
                for (j, &sc) in scores.iter().enumerate() {
                    let p = (sc - m).exp();
                    sum += p;
                    o.iter_mut()
                        .zip(&v_cache[(b * capacity + j) * kvd + kh * hd..][..hd])
                        .for_each(|(a, x)| *a += p * x);
                }
                o.iter_mut().for_each(|x| *x /= sum);
            }
        });
}
