//! Elementwise ops and reductions, plus embedding, RMSNorm, RoPE and SwiGLU (forward and
//! backward side by side, each readable top to bottom).

use crate::backend::Rope;
use rayon::prelude::*;

pub fn add_assign(y: &mut [f32], x: &[f32]) {
    y.par_iter_mut()
        .zip(x.par_iter())
        .for_each(|(a, b)| *a += b);
}

pub fn scale(y: &mut [f32], s: f32) {
    y.par_iter_mut().for_each(|a| *a *= s);
}

pub fn sum_squares(y: &[f32]) -> f64 {
    // fixed-size chunks keep the summation order (and the result) independent of threads
    y.par_chunks(4096)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect::<Vec<_>>()
        .iter()
        .sum()
}

pub fn all_finite(y: &[f32]) -> bool {
    y.par_iter().all(|v| v.is_finite())
}

// ---- embedding ---------------------------------------------------------------------------

pub fn embedding_forward(out: &mut [f32], table: &[f32], ids: &[u32], dim: usize) {
    out.par_chunks_mut(dim)
        .zip(ids.par_iter())
        .for_each(|(o, &id)| {
            let id = id as usize;
            o.copy_from_slice(&table[id * dim..(id + 1) * dim]);
        });
}

/// `dtable[ids[n]] += dout[n]`; sequential over tokens so repeated ids add in a fixed order.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], dim: usize) {
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        dtable[id * dim..(id + 1) * dim]
            .iter_mut()
            .zip(&dout[n * dim..(n + 1) * dim])
            .for_each(|(a, b)| *a += b);
    }
}

// ---- RMSNorm (Hugging Face: x · rsqrt(mean(x²) + eps), then · w; statistics in f32) -------

pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    dim: usize,
    eps: f32,
) {
    out.par_chunks_mut(dim)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(dim))
        .for_each(|((o, r), xr)| {
            let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            *r = 1.0 / (ms + eps).sqrt();
            for i in 0..dim {
                o[i] = xr[i] * *r * w[i];
            }
        });
}

/// y = w ⊙ x·r, r = (mean(x²)+eps)^(-1/2):  dx = r·(w⊙dy) − x·r³·mean(x ⊙ w ⊙ dy);  dw += Σ dy ⊙ x·r
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dim: usize,
) {
    dx.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .zip(dout.par_chunks(dim))
        .zip(rstd.par_iter())
        .for_each(|(((d, xr), dy), &r)| {
            let dot = (0..dim).map(|i| xr[i] * w[i] * dy[i]).sum::<f32>() / dim as f32;
            for i in 0..dim {
                d[i] = r * w[i] * dy[i] - xr[i] * r * r * r * dot;
            }
        });
    // dw: column sums over rows, parallel over column blocks (fixed order per column)
    let n = rstd.len();
    dw[..dim]
        .par_chunks_mut(16)
        .enumerate()
        .for_each(|(cb, dwc)| {
            for (j, acc) in dwc.iter_mut().enumerate() {
                let c = cb * 16 + j;
                *acc += (0..n)
                    .map(|i| dout[i * dim + c] * x[i * dim + c] * rstd[i])
                    .sum::<f32>();
            }
        });
}

// ---- RoPE (rotate-half: pairs (i, i + rotary_dim/2), the rest passed through) -------------

/// Rotates every head of every row by its position's angles ([`Rope`]); `sign = -1` applies the
/// inverse rotation (the backward: a scaled rotation's transpose).
pub fn rope_apply(
    x: &mut [f32],
    positions: &[u32],
    rope: &Rope<Vec<f32>>,
    n_heads: usize,
    head_dim: usize,
    sign: f32,
) {
    let half = rope.rotary_dim / 2;
    x.par_chunks_mut(n_heads * head_dim)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            let cs: Vec<(f32, f32)> = (0..half)
                .map(|i| {
                    let a = pos as f32 * rope.inv_freq[i];
                    (a.cos() * rope.scale, sign * (a.sin() * rope.scale))
                })
                .collect();
            for h in row.chunks_mut(head_dim) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (x1, x2) = (h[i], h[i + half]);
                    h[i] = x1 * c - x2 * s;
                    h[i + half] = x2 * c + x1 * s;
                }
            }
        });
}

// ---- SwiGLU ------------------------------------------------------------------------------

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_iter_mut()
        .zip(gate.par_iter().zip(up.par_iter()))
        .for_each(|(o, (&g, &u))| *o = g * sigmoid(g) * u);
}

/// d/dg silu(g) = σ(g)·(1 + g·(1 − σ(g)))
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .enumerate()
        .for_each(|(i, (dg, du))| {
            let (g, u, d) = (gate[i], up[i], dout[i]);
            let s = sigmoid(g);
            *du = d * g * s;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
        });
}

// ---- AdamW (PyTorch semantics) -------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    step: u64,
) {
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    p.par_iter_mut()
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(g.par_iter())
        .for_each(|(((p, m), v), &g)| {
            *p -= lr * wd * *p;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let mhat = *m / bc1;
            let vhat = *v / bc2;
            *p -= lr * mhat / (vhat.sqrt() + eps);
        });
}
