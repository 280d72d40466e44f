//! The composite defaults of the stacked decode ops (`Backend::decode_rope_cache_write_stacked`,
//! `Backend::swiglu_forward_stacked`): split the stacked GEMM output's rows with `copy`, then
//! run the unstacked op. The CPU reference runs these; CUDA's fused kernels are tested against
//! them.

use super::{check_swiglu_stacked, Backend, DecodeShape, Rope};
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
    let (qd, kvd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let ld = qd + 2 * kvd;
    ensure!(
        be.len(qkv) == s.batch * ld && be.len(q) == s.batch * qd,
        "decode_rope_cache_write_stacked: qkv holds {} values and q {}, for {} rows of \
         {ld} and {qd}",
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
    be.decode_rope_cache_write(q, &mut k, &v, k_cache, v_cache, positions, rope, s)
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
