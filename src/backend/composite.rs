//! The composite defaults of the stacked decode ops (`Backend::decode_rope_cache_write_stacked`,
//! its Qwen3 twin `Backend::decode_qk_norm_rope_cache_write_stacked`,
//! `Backend::swiglu_forward_stacked`): split the stacked GEMM output's rows with `copy`, then
//! run the unstacked op; and of Qwen3's training q/k path (`Backend::qk_norm_rope_forward` and
//! its backward): the norms, then RoPE. The CPU reference runs these; CUDA's fused kernels are
//! tested against them.

use super::{check_swiglu_stacked, Backend, DecodeShape, QkNormRope, Rope};
use anyhow::{ensure, Result};

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_rope_cache_write_stacked<B: Backend + ?Sized>(
    be: &B,
    q: &mut B::Buf,
    qkv: &B::Buf,
    k_cache: &mut B::Buf,
    v_cache: &mut B::Buf,
    positions: &B::Ids,
    rope: &Rope<B::Buf>,
    s: DecodeShape,
) -> Result<()> {
    let (mut k, v) = split_qkv(be, "decode_rope_cache_write_stacked", q, qkv, s)?;
    be.decode_rope_cache_write(q, &mut k, &v, k_cache, v_cache, positions, rope, s)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_qk_norm_rope_cache_write_stacked<B: Backend + ?Sized>(
    be: &B,
    q: &mut B::Buf,
    qkv: &B::Buf,
    k_cache: &mut B::Buf,
    v_cache: &mut B::Buf,
    positions: &B::Ids,
    rope: &Rope<B::Buf>,
    q_norm: &B::Buf,
    k_norm: &B::Buf,
    eps: f32,
    s: DecodeShape,
) -> Result<()> {
    let op = "decode_qk_norm_rope_cache_write_stacked";
    let hd = s.head_dim;
    ensure!(
        be.len(q_norm) == hd && be.len(k_norm) == hd,
        "{op}: q_norm holds {} values and k_norm {}, for head_dim {hd}",
        be.len(q_norm),
        be.len(k_norm)
    );
    let mut q_raw = be.zeros(be.len(q))?;
    let (k_raw, v) = split_qkv(be, op, &mut q_raw, qkv, s)?;
    let mut k = be.zeros(be.len(&k_raw))?;
    let (qn, kn) = (s.batch * s.n_heads, s.batch * s.n_kv_heads);
    let (mut rstd_q, mut rstd_k) = (be.zeros(qn)?, be.zeros(kn)?);
    be.head_rmsnorm_forward(q, &mut rstd_q, &q_raw, q_norm, qn, hd, eps)?;
    be.head_rmsnorm_forward(&mut k, &mut rstd_k, &k_raw, k_norm, kn, hd, eps)?;
    be.decode_rope_cache_write(q, &mut k, &v, k_cache, v_cache, positions, rope, s)
}

/// The rows q | k | v of a stacked projection's output: q into `q`, k and v returned.
fn split_qkv<B: Backend + ?Sized>(
    be: &B,
    op: &str,
    q: &mut B::Buf,
    qkv: &B::Buf,
    s: DecodeShape,
) -> Result<(B::Buf, B::Buf)> {
    let (qd, kvd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let ld = qd + 2 * kvd;
    ensure!(
        be.len(qkv) == s.batch * ld && be.len(q) == s.batch * qd,
        "{op}: qkv holds {} values and q {}, for {} rows of {ld} and {qd}",
        be.len(qkv),
        be.len(q),
        s.batch
    );
    let mut k = be.zeros(s.batch * kvd)?;
    let mut v = be.zeros(s.batch * kvd)?;
    for b in 0..s.batch {
        be.copy(q, b * qd, qkv, b * ld, qd)?;
        be.copy(&mut k, b * kvd, qkv, b * ld + qd, kvd)?;
        be.copy(&mut v, b * kvd, qkv, b * ld + qd + kvd, kvd)?;
    }
    Ok((k, v))
}

pub(super) fn swiglu_forward_stacked<B: Backend + ?Sized>(
    be: &B,
    out: &mut B::Buf,
    gate_up: &B::Buf,
    rows: usize,
    f: usize,
) -> Result<()> {
    check_swiglu_stacked(be.len(gate_up), be.len(out), rows, f)?;
    let mut gate = be.zeros(rows * f)?;
    let mut up = be.zeros(rows * f)?;
    for r in 0..rows {
        be.copy(&mut gate, r * f, gate_up, r * 2 * f, f)?;
        be.copy(&mut up, r * f, gate_up, r * 2 * f + f, f)?;
    }
    be.swiglu_forward(out, &gate, &up)
}

pub(super) fn qk_norm_rope_forward<B: Backend + ?Sized>(
    be: &B,
    q: &mut B::Buf,
    k: &mut B::Buf,
    rstd_q: &mut B::Buf,
    rstd_k: &mut B::Buf,
    a: &QkNormRope<B::Buf, B::Ids>,
    eps: f32,
) -> Result<()> {
    let (qn, kn, hd) = check_qk_norm(be, "qk_norm_rope_forward", a)?;
    be.head_rmsnorm_forward(q, rstd_q, a.q_raw, a.q_norm, qn, hd, eps)?;
    be.head_rmsnorm_forward(k, rstd_k, a.k_raw, a.k_norm, kn, hd, eps)?;
    be.rope_forward(q, a.positions, a.rope, a.tokens, a.n_heads, hd)?;
    be.rope_forward(k, a.positions, a.rope, a.tokens, a.n_kv_heads, hd)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn qk_norm_rope_backward<B: Backend + ?Sized>(
    be: &B,
    dq_raw: &mut B::Buf,
    dk_raw: &mut B::Buf,
    dq_norm: &mut B::Buf,
    dk_norm: &mut B::Buf,
    dq: &mut B::Buf,
    dk: &mut B::Buf,
    rstd_q: &B::Buf,
    rstd_k: &B::Buf,
    a: &QkNormRope<B::Buf, B::Ids>,
) -> Result<()> {
    let (qn, kn, hd) = check_qk_norm(be, "qk_norm_rope_backward", a)?;
    be.rope_backward(dq, a.positions, a.rope, a.tokens, a.n_heads, hd)?;
    be.rope_backward(dk, a.positions, a.rope, a.tokens, a.n_kv_heads, hd)?;
    be.rmsnorm_backward(dq_raw, dq_norm, dq, a.q_raw, a.q_norm, rstd_q, qn, hd)?;
    be.rmsnorm_backward(dk_raw, dk_norm, dk, a.k_raw, a.k_norm, rstd_k, kn, hd)
}

/// The norm weights' lengths (the ops below check the rest); gives the head rows of q and of k
/// and the head dim.
pub(super) fn check_qk_norm<B: Backend + ?Sized>(
    be: &B,
    op: &str,
    a: &QkNormRope<B::Buf, B::Ids>,
) -> Result<(usize, usize, usize)> {
    let hd = a.head_dim;
    ensure!(
        be.len(a.q_norm) == hd && be.len(a.k_norm) == hd,
        "{op}: q_norm holds {} values and k_norm {}, for head_dim {hd}",
        be.len(a.q_norm),
        be.len(a.k_norm)
    );
    Ok((a.tokens * a.n_heads, a.tokens * a.n_kv_heads, hd))
}
