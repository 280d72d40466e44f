//! One function per op family: builds random inputs at each shape of the set, times the op
//! through the `Backend` trait (so the CPU and the GPU run the same code) and counts its work.
//!
//! Work conventions (what `flops` and `bytes` mean, so ratios against peers are fair):
//! - attention: see `shapes::attention_forward_flops`; fwd+bwd = 3.5 × fwd.
//! - log-prob head: 2·N·D·V forward, 6·N·D·V forward + backward (recomputation not counted).
//! - bandwidth-bound ops: the bytes the op must read and write at minimum (f32), e.g. the
//!   GRPO loss fwd+bwd reads four per-token f32 inputs and writes one gradient: 20 B/token.

use super::shapes::{self, AttentionShape};
use super::{BenchDevice, Harness, KernelBenchOptions, Sink};
use crate::backend::{AttnShape, DecodeShape, GrpoLossConfig, ImportanceSampling, LossType, Rope};
use anyhow::Result;
use rand::{Rng, SeedableRng};

type Rng8 = rand_chacha::ChaCha8Rng;

fn randv(rng: &mut Rng8, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

fn wanted(opts: &KernelBenchOptions, id: &str) -> bool {
    opts.filter.as_deref().is_none_or(|f| id.contains(f))
}

/// Attention forward and forward+backward with the currently selected implementation.
pub fn run_attention<B: BenchDevice>(
    h: &mut Harness<B>,
    variant: &str,
    opts: &KernelBenchOptions,
    out: &mut Sink,
) -> Result<()> {
    let be = h.be;
    let mut rng = Rng8::seed_from_u64(1);
    for (id, s) in shapes::shapes(opts.set).attention {
        let (fwd_id, both_id) = (
            format!("attention.fwd/{id}"),
            format!("attention.fwd_bwd/{id}"),
        );
        if !wanted(opts, &fwd_id) && !wanted(opts, &both_id) {
            continue;
        }
        let shape = attn_shape(&s);
        let n = s.batch * s.seq;
        let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let q = be.upload(&randv(&mut rng, n * qd, 1.0))?;
        let k = be.upload(&randv(&mut rng, n * kd, 1.0))?;
        let v = be.upload(&randv(&mut rng, n * kd, 1.0))?;
        let dout = be.upload(&randv(&mut rng, n * qd, 1.0))?;
        let mut o = be.zeros(n * qd)?;
        let mut lse = be.zeros(s.batch * s.n_heads * s.seq)?;
        let (mut dq, mut dk, mut dv) = (be.zeros(n * qd)?, be.zeros(n * kd)?, be.zeros(n * kd)?);
        let fwd_flops = shapes::attention_forward_flops(&s);
        if wanted(opts, &fwd_id) {
            let r = h.record(fwd_id, variant, fwd_flops, 0.0, &mut || {
                be.attention_forward(&mut o, &mut lse, &q, &k, &v, shape)
            })?;
            out.push(r)?;
        }
        if wanted(opts, &both_id) {
            let r = h.record(both_id, variant, 3.5 * fwd_flops, 0.0, &mut || {
                be.attention_forward(&mut o, &mut lse, &q, &k, &v, shape)?;
                be.attention_backward(
                    &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &o, &lse, shape,
                )
            })?;
            out.push(r)?;
        }
    }
    Ok(())
}

fn attn_shape(s: &AttentionShape) -> AttnShape {
    AttnShape {
        batch: s.batch,
        seq: s.seq,
        n_heads: s.n_heads,
        n_kv_heads: s.n_kv_heads,
        head_dim: s.head_dim,
    }
}

fn loss_cfg(len: usize) -> GrpoLossConfig {
    GrpoLossConfig {
        loss_type: LossType::Dapo,
        epsilon_low: 0.2,
        epsilon_high: 0.28,
        beta: 0.04,
        max_completion_len: len,
        importance_sampling: ImportanceSampling::Token,
        delta: None,
    }
}

/// Per-token loss inputs of a `[batch, len]` batch: log-probs near the old ones, a ragged mask.
fn loss_inputs(rng: &mut Rng8, batch: usize, len: usize) -> [Vec<f32>; 5] {
    let n = batch * len;
    let old: Vec<f32> = (0..n).map(|_| -rng.gen::<f32>() * 4.0).collect();
    let logp: Vec<f32> = old
        .iter()
        .map(|o| o + rng.gen::<f32>() * 0.2 - 0.1)
        .collect();
    let refp: Vec<f32> = old
        .iter()
        .map(|o| o + rng.gen::<f32>() * 0.2 - 0.1)
        .collect();
    let mut mask = vec![0f32; n];
    for b in 0..batch {
        let keep = rng.gen_range(len / 2..=len);
        mask[b * len..b * len + keep].fill(1.0);
    }
    let adv = randv(rng, batch, 1.0);
    [logp, old, refp, mask, adv]
}

/// The log-prob head's inputs, outputs and gradients at one shape (temperature 1).
struct Head<B: BenchDevice> {
    s: shapes::LogprobShape,
    hidden: B::Buf,
    w: B::Buf,
    targets: B::Ids,
    logp: B::Buf,
    entropy: B::Buf,
    lse: B::Buf,
    dhidden: B::Buf,
    dw: B::Buf,
}

impl<B: BenchDevice> Head<B> {
    fn new(be: &B, rng: &mut Rng8, s: &shapes::LogprobShape) -> Result<Self> {
        let (n, d, v) = (s.tokens, s.hidden, s.vocab);
        let targets: Vec<u32> = (0..n).map(|_| rng.gen_range(0..v as u32)).collect();
        Ok(Head {
            s: *s,
            hidden: be.upload(&randv(rng, n * d, 1.0))?,
            w: be.upload(&randv(rng, v * d, 0.05))?,
            targets: be.upload_ids(&targets)?,
            logp: be.zeros(n)?,
            entropy: be.zeros(n)?,
            lse: be.zeros(n)?,
            dhidden: be.zeros(n * d)?,
            dw: be.zeros(v * d)?,
        })
    }

    fn forward(&mut self, be: &B) -> Result<()> {
        let s = self.s;
        be.fused_logprob_forward(
            &mut self.logp,
            &mut self.entropy,
            &mut self.lse,
            &self.hidden,
            &self.w,
            &self.targets,
            s.tokens,
            s.hidden,
            s.vocab,
            1.0,
        )
    }

    fn backward(&mut self, be: &B, dlogp: &B::Buf) -> Result<()> {
        let s = self.s;
        be.fused_logprob_backward(
            &mut self.dhidden,
            &mut self.dw,
            dlogp,
            &self.hidden,
            &self.w,
            &self.targets,
            &self.lse,
            s.tokens,
            s.hidden,
            s.vocab,
            1.0,
        )
    }
}

/// The GEMM-bound ops, timed once per GEMM precision: the log-prob head, the head + GRPO
/// loss, linear.
pub fn run_gemm_ops<B: BenchDevice>(
    h: &mut Harness<B>,
    variant: &str,
    opts: &KernelBenchOptions,
    out: &mut Sink,
) -> Result<()> {
    let be = h.be;
    let set = shapes::shapes(opts.set);
    let mut rng = Rng8::seed_from_u64(2);

    for (id, s) in &set.fused_logprob {
        let (fwd_id, both_id) = (
            format!("fused_logprob.fwd/{id}"),
            format!("fused_logprob.fwd_bwd/{id}"),
        );
        if !wanted(opts, &fwd_id) && !wanted(opts, &both_id) {
            continue;
        }
        let mut head = Head::new(be, &mut rng, s)?;
        let dlogp = be.upload(&randv(&mut rng, s.tokens, 1.0 / s.tokens as f32))?;
        if wanted(opts, &fwd_id) {
            let flops = shapes::logprob_flops(s, false);
            let r = h.record(fwd_id, variant, flops, 0.0, &mut || head.forward(be))?;
            out.push(r)?;
        }
        if wanted(opts, &both_id) {
            let flops = shapes::logprob_flops(s, true);
            let r = h.record(both_id, variant, flops, 0.0, &mut || {
                head.forward(be)?;
                head.backward(be, &dlogp)
            })?;
            out.push(r)?;
        }
    }

    for (id, l, s) in &set.logprob_grpo {
        let id = format!("logprob_grpo.fwd_bwd/{id}");
        if !wanted(opts, &id) {
            continue;
        }
        let mut head = Head::new(be, &mut rng, s)?;
        let [_, old, refp, mask, adv] = loss_inputs(&mut rng, l.batch, l.len);
        let (old, refp, mask, adv) = (
            be.upload(&old)?,
            be.upload(&refp)?,
            be.upload(&mask)?,
            be.upload(&adv)?,
        );
        let mut dlogp = be.zeros(s.tokens)?;
        let cfg = loss_cfg(l.len);
        let flops = shapes::logprob_flops(s, true);
        let r = h.record(id, variant, flops, 0.0, &mut || {
            head.forward(be)?;
            let lp = &head.logp;
            be.grpo_loss_fused(
                &mut dlogp, lp, &old, &refp, &mask, &adv, l.batch, l.len, &cfg, 1.0,
            )?;
            head.backward(be, &dlogp)
        })?;
        out.push(r)?;
    }

    // linear at the RMSNorm rows: the model's dominant GEMMs (hidden → 4·hidden)
    for (_, s) in &set.rmsnorm {
        let (n, d) = (s.rows, s.dim);
        let x = be.upload(&randv(&mut rng, n * d, 1.0))?;
        let mut dx = be.zeros(n * d)?;
        let m = 4 * d;
        let wl = be.upload(&randv(&mut rng, m * d, 0.05))?;
        let (mut yl, mut dwl) = (be.zeros(n * m)?, be.zeros(m * d)?);
        let doutl = be.upload(&randv(&mut rng, n * m, 1.0))?;
        let flops = 2.0 * (n * d * m) as f64;
        let lin_id = format!("linear.fwd/{n}x{d}x{m}");
        if wanted(opts, &lin_id) {
            let r = h.record(lin_id, variant, flops, 0.0, &mut || {
                be.linear_forward(&mut yl, &x, &wl, None, n, d, m)
            })?;
            out.push(r)?;
        }
        let lin_id = format!("linear.bwd/{n}x{d}x{m}");
        if wanted(opts, &lin_id) {
            let r = h.record(lin_id, variant, 2.0 * flops, 0.0, &mut || {
                be.linear_backward(Some(&mut dx), &mut dwl, None, &doutl, &x, &wl, n, d, m)
            })?;
            out.push(r)?;
        }
    }
    Ok(())
}

/// The decode shape of a bench case: the cache holds `context + 1` positions, the last written.
fn decode_shape(d: &shapes::DecodeShapeB) -> (DecodeShape, usize) {
    let cap = d.context + 1;
    let s = DecodeShape {
        batch: d.batch,
        capacity: cap,
        n_heads: d.n_heads,
        n_kv_heads: d.n_kv_heads,
        head_dim: d.head_dim,
    };
    (s, cap)
}

/// The decode attention over the KV cache with the currently selected kernel: every sequence
/// at the last position of a `context + 1` cache. Bytes: both caches read once (the query heads
/// of a GQA group read the same rows again, counted once: the floor is the cache's size) plus q
/// read and out written.
pub fn run_decode_attention<B: BenchDevice>(
    h: &mut Harness<B>,
    variant: &str,
    opts: &KernelBenchOptions,
    out: &mut Sink,
) -> Result<()> {
    let be = h.be;
    let mut rng = Rng8::seed_from_u64(5);
    for (id, d) in &shapes::shapes(opts.set).decode_attention {
        let id = format!("decode_attention.fwd/{id}");
        if !wanted(opts, &id) {
            continue;
        }
        let (s, cap) = decode_shape(d);
        let (qd, kvd) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
        let mut kc = be.upload(&randv(&mut rng, d.batch * cap * kvd, 1.0))?;
        let mut vc = be.upload(&randv(&mut rng, d.batch * cap * kvd, 1.0))?;
        // the variant's cache type (a bf16 cache narrows these values)
        be.keep_as_kv_cache(&mut kc)?;
        be.keep_as_kv_cache(&mut vc)?;
        let q = be.upload(&randv(&mut rng, d.batch * qd, 1.0))?;
        let pos = be.upload_ids(&vec![(cap - 1) as u32; d.batch])?;
        let mut o = be.zeros(d.batch * qd)?;
        // k and v read once, q read and out written
        let cache_bytes = 2 * be.kv_cache_value_bytes() * d.batch * cap * kvd;
        let bytes = (cache_bytes + 8 * d.batch * qd) as f64;
        let r = h.record(id, variant, 0.0, bytes, &mut || {
            be.decode_attention(&mut o, &q, &kc, &vc, &pos, s)
        })?;
        out.push(r)?;
    }
    Ok(())
}

/// The bandwidth-bound ops: GRPO loss, RMSNorm, SwiGLU, RoPE, AdamW, the decode step's fused
/// RoPE + cache write, sampling.
pub fn run_memory_ops<B: BenchDevice>(
    h: &mut Harness<B>,
    opts: &KernelBenchOptions,
    out: &mut Sink,
) -> Result<()> {
    let be = h.be;
    let variant = be.variant();
    let variant = variant.as_str();
    let set = shapes::shapes(opts.set);
    let mut rng = Rng8::seed_from_u64(3);
    for (id, s) in &set.grpo_loss {
        let id = format!("grpo_loss.fwd_bwd/{id}");
        if !wanted(opts, &id) {
            continue;
        }
        let [logp, old, refp, mask, adv] = loss_inputs(&mut rng, s.batch, s.len);
        let n = s.batch * s.len;
        let (logp, old, refp) = (be.upload(&logp)?, be.upload(&old)?, be.upload(&refp)?);
        let (mask, adv) = (be.upload(&mask)?, be.upload(&adv)?);
        let mut dlogp = be.zeros(n)?;
        let cfg = loss_cfg(s.len);
        // the fused pass the trainer runs (forward + backward, metrics reduced on the device)
        let r = h.record(id, variant, 0.0, 20.0 * n as f64, &mut || {
            be.grpo_loss_fused(
                &mut dlogp, &logp, &old, &refp, &mask, &adv, s.batch, s.len, &cfg, 1.0,
            )
            .map(|_| ())
        })?;
        out.push(r)?;
    }

    run_layer_ops(h, opts, &set, &mut rng, variant, out)
}

/// The memory-bound layer ops, decode attention and sampling.
fn run_layer_ops<B: BenchDevice>(
    h: &mut Harness<B>,
    opts: &KernelBenchOptions,
    set: &shapes::Shapes,
    rng: &mut Rng8,
    variant: &str,
    out: &mut Sink,
) -> Result<()> {
    let be = h.be;
    for (id, s) in &set.rmsnorm {
        let (n, d) = (s.rows, s.dim);
        let x = be.upload(&randv(rng, n * d, 1.0))?;
        let w = be.upload(&randv(rng, d, 1.0))?;
        let dout = be.upload(&randv(rng, n * d, 1.0))?;
        let (mut y, mut rstd, mut dx, mut dw) = (
            be.zeros(n * d)?,
            be.zeros(n)?,
            be.zeros(n * d)?,
            be.zeros(d)?,
        );
        let fwd_id = format!("rmsnorm.fwd/{id}");
        if wanted(opts, &fwd_id) {
            let r = h.record(fwd_id, variant, 0.0, 8.0 * (n * d) as f64, &mut || {
                be.rmsnorm_forward(&mut y, &mut rstd, &x, &w, n, d, 1e-6)
            })?;
            out.push(r)?;
        }
        // the decode step's residual add fused with the norm: x and δ read, x and out written
        let add_id = format!("add_rmsnorm.fwd/{id}");
        if wanted(opts, &add_id) {
            let delta = be.upload(&randv(rng, n * d, 1e-3))?;
            let mut xs = be.upload(&randv(rng, n * d, 1.0))?;
            let r = h.record(add_id, variant, 0.0, 16.0 * (n * d) as f64, &mut || {
                be.add_rmsnorm_forward(&mut xs, &delta, &mut y, &mut rstd, &w, n, d, 1e-6)
            })?;
            out.push(r)?;
        }
        let bwd_id = format!("rmsnorm.bwd/{id}");
        if wanted(opts, &bwd_id) {
            be.rmsnorm_forward(&mut y, &mut rstd, &x, &w, n, d, 1e-6)?;
            let r = h.record(bwd_id, variant, 0.0, 12.0 * (n * d) as f64, &mut || {
                be.rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd, n, d)
            })?;
            out.push(r)?;
        }
    }

    for (id, s) in &set.swiglu {
        let len = s.rows * s.dim;
        let g = be.upload(&randv(rng, len, 2.0))?;
        let u = be.upload(&randv(rng, len, 2.0))?;
        let dout = be.upload(&randv(rng, len, 1.0))?;
        let (mut y, mut dg, mut du) = (be.zeros(len)?, be.zeros(len)?, be.zeros(len)?);
        let fwd_id = format!("swiglu.fwd/{id}");
        if wanted(opts, &fwd_id) {
            let r = h.record(fwd_id, variant, 0.0, 12.0 * len as f64, &mut || {
                be.swiglu_forward(&mut y, &g, &u)
            })?;
            out.push(r)?;
        }
        let bwd_id = format!("swiglu.bwd/{id}");
        if wanted(opts, &bwd_id) {
            let r = h.record(bwd_id, variant, 0.0, 20.0 * len as f64, &mut || {
                be.swiglu_backward(&mut dg, &mut du, &dout, &g, &u)
            })?;
            out.push(r)?;
        }
    }

    for (id, s) in &set.rope {
        let id = format!("rope.fwd/{id}");
        if !wanted(opts, &id) {
            continue;
        }
        let n = s.batch * s.seq;
        let mut x = be.upload(&randv(rng, n * s.n_heads * s.head_dim, 1.0))?;
        let pos: Vec<u32> = (0..n).map(|i| (i % s.seq) as u32).collect();
        let pos = be.upload_ids(&pos)?;
        let inv: Vec<f32> = (0..s.head_dim / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / s.head_dim as f32))
            .collect();
        let inv = Rope::whole_head(be.upload(&inv)?, s.head_dim);
        let bytes = 8.0 * (n * s.n_heads * s.head_dim) as f64;
        let r = h.record(id, variant, 0.0, bytes, &mut || {
            be.rope_forward(&mut x, &pos, &inv, n, s.n_heads, s.head_dim)
        })?;
        out.push(r)?;
    }

    for (id, s) in &set.rope {
        // Qwen3's q/k norm + RoPE in one launch against the four it replaces (the norms, then
        // RoPE), at the RoPE shape with k's heads as its GQA says: fused, q and k read once
        // and written once (8 bytes an element); the composite twice each (16); the backward
        // reads the gradient and x, writes the turned gradient and dx, then the weight sums
        // read the turned gradient and x again (24)
        let ids = [
            "qk_norm_rope.fwd",
            "qk_norm_rope_composite.fwd",
            "qk_norm_rope.bwd",
        ]
        .map(|op| format!("{op}/{id}"));
        if !ids.iter().any(|i| wanted(opts, i)) {
            continue;
        }
        let n = s.batch * s.seq;
        let (qn, kn, hd) = (n * s.n_heads, n * s.n_kv_heads, s.head_dim);
        let elems = ((qn + kn) * hd) as f64;
        let (q_raw, k_raw) = (
            be.upload(&randv(rng, qn * hd, 1.0))?,
            be.upload(&randv(rng, kn * hd, 1.0))?,
        );
        let (q_norm, k_norm) = (
            be.upload(&randv(rng, hd, 1.0))?,
            be.upload(&randv(rng, hd, 1.0))?,
        );
        let pos: Vec<u32> = (0..n).map(|i| (i % s.seq) as u32).collect();
        let pos = be.upload_ids(&pos)?;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1e6f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let rope = Rope::whole_head(be.upload(&inv)?, hd);
        let a = crate::backend::QkNormRope {
            q_raw: &q_raw,
            k_raw: &k_raw,
            q_norm: &q_norm,
            k_norm: &k_norm,
            positions: &pos,
            rope: &rope,
            tokens: n,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: hd,
        };
        let (mut q, mut k) = (be.zeros(qn * hd)?, be.zeros(kn * hd)?);
        let (mut rq, mut rk) = (be.zeros(qn)?, be.zeros(kn)?);
        let [fwd, composite, bwd] = ids;
        if wanted(opts, &fwd) {
            let r = h.record(fwd, variant, 0.0, 8.0 * elems, &mut || {
                be.qk_norm_rope_forward(&mut q, &mut k, &mut rq, &mut rk, &a, 1e-6)
            })?;
            out.push(r)?;
        }
        if wanted(opts, &composite) {
            let r = h.record(composite, variant, 0.0, 16.0 * elems, &mut || {
                be.head_rmsnorm_forward(&mut q, &mut rq, &q_raw, &q_norm, qn, hd, 1e-6)?;
                be.head_rmsnorm_forward(&mut k, &mut rk, &k_raw, &k_norm, kn, hd, 1e-6)?;
                be.rope_forward(&mut q, &pos, &rope, n, s.n_heads, hd)?;
                be.rope_forward(&mut k, &pos, &rope, n, s.n_kv_heads, hd)
            })?;
            out.push(r)?;
        }
        if wanted(opts, &bwd) {
            be.qk_norm_rope_forward(&mut q, &mut k, &mut rq, &mut rk, &a, 1e-6)?;
            let (mut dq_raw, mut dk_raw) = (be.zeros(qn * hd)?, be.zeros(kn * hd)?);
            let (mut dwq, mut dwk) = (be.zeros(hd)?, be.zeros(hd)?);
            // the gradient is turned in place: each repetition turns it again (same work)
            let (mut dq, mut dk) = (
                be.upload(&randv(rng, qn * hd, 1.0))?,
                be.upload(&randv(rng, kn * hd, 1.0))?,
            );
            let r = h.record(bwd, variant, 0.0, 24.0 * elems, &mut || {
                be.qk_norm_rope_backward(
                    &mut dq_raw,
                    &mut dk_raw,
                    &mut dwq,
                    &mut dwk,
                    &mut dq,
                    &mut dk,
                    &rq,
                    &rk,
                    &a,
                )
            })?;
            out.push(r)?;
        }
    }

    for (id, p) in &set.adamw {
        let id = format!("adamw.step/{id}");
        if !wanted(opts, &id) {
            continue;
        }
        let mut param = be.upload(&randv(rng, *p, 1.0))?;
        let grad = be.upload(&randv(rng, *p, 1e-3))?;
        let (mut m, mut v) = (be.zeros(*p)?, be.zeros(*p)?);
        let mut step = 0u64;
        let r = h.record(id, variant, 0.0, 28.0 * *p as f64, &mut || {
            step += 1;
            be.adamw_step(
                &mut param, &grad, &mut m, &mut v, 1e-4, 0.9, 0.999, 1e-8, 0.01, step,
            )
        })?;
        out.push(r)?;
    }

    for (shape, d) in &set.decode_attention {
        // the decode step's RoPE of q and k fused with the cache write: q and k read and
        // written, v read, one row of each cache written (the attention: run_decode_attention);
        // and Qwen3's from the stacked q/k/v output with each head of q and k RMSNorm-ed first:
        // qkv read, q written, one row of each cache written
        let plain = format!("decode_rope_cache_write/{shape}");
        let qk_norm = format!("decode_qk_norm_rope_cache_write_stacked/{shape}");
        if !wanted(opts, &plain) && !wanted(opts, &qk_norm) {
            continue;
        }
        let (s, cap) = decode_shape(d);
        let (qd, kvd) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
        let mut kc = be.upload(&randv(rng, d.batch * cap * kvd, 1.0))?;
        let mut vc = be.upload(&randv(rng, d.batch * cap * kvd, 1.0))?;
        let pos = be.upload_ids(&vec![(cap - 1) as u32; d.batch])?;
        let mut qr = be.upload(&randv(rng, d.batch * qd, 1.0))?;
        let inv: Vec<f32> = (0..d.head_dim / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / d.head_dim as f32))
            .collect();
        let inv = Rope::whole_head(be.upload(&inv)?, d.head_dim);
        if wanted(opts, &plain) {
            let mut kr = be.upload(&randv(rng, d.batch * kvd, 1.0))?;
            let v = be.upload(&randv(rng, d.batch * kvd, 1.0))?;
            let bytes = (8 * d.batch * qd + 20 * d.batch * kvd) as f64;
            let r = h.record(plain, variant, 0.0, bytes, &mut || {
                be.decode_rope_cache_write(&mut qr, &mut kr, &v, &mut kc, &mut vc, &pos, &inv, s)
            })?;
            out.push(r)?;
        }
        if wanted(opts, &qk_norm) {
            let qkv = be.upload(&randv(rng, d.batch * (qd + 2 * kvd), 1.0))?;
            let qn = be.upload(&randv(rng, d.head_dim, 1.0))?;
            let kn = be.upload(&randv(rng, d.head_dim, 1.0))?;
            let bytes = (8 * d.batch * qd + 16 * d.batch * kvd) as f64;
            let r = h.record(qk_norm, variant, 0.0, bytes, &mut || {
                be.decode_qk_norm_rope_cache_write_stacked(
                    &mut qr, &qkv, &mut kc, &mut vc, &pos, &inv, &qn, &kn, 1e-6, s,
                )
            })?;
            out.push(r)?;
        }
    }

    for (id, s) in &set.sample {
        let id = format!("sample.top_p0.95/{id}");
        if !wanted(opts, &id) {
            continue;
        }
        let logits = be.upload(&randv(rng, s.batch * s.vocab, 8.0))?;
        let uniforms: Vec<f32> = (0..s.batch).map(|_| rng.gen::<f32>()).collect();
        let bytes = 4.0 * (s.batch * s.vocab) as f64;
        let r = h.record(id, variant, 0.0, bytes, &mut || {
            be.sample(&logits, &uniforms, s.batch, s.vocab, 1.0, 0.95, 0)
                .map(|_| ())
        })?;
        out.push(r)?;
    }
    Ok(())
}
