//! Launchers of Qwen3's training q/k path (kernels/qk_norm_rope.cu): the per-head RMSNorm of q
//! and k and their RoPE in one launch, and the backward's inverse rotation and norm input
//! gradient in one, then `rmsnorm_backward_weight` for each norm weight (rmsnorm.cu).

use super::dense::rope_dims;
use super::kernels::{self, RopeDims};
use super::{dim_i32, grid_cols, need, need_ids, row_threads, Cuda, CudaBuf};
use crate::backend::composite::check_qk_norm;
use crate::backend::QkNormRope;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};

type Args<'a> = QkNormRope<'a, CudaBuf, CudaSlice<u32>>;

/// Grid (tokens, n_heads + n_kv_heads), one block per head row with head_rmsnorm_forward's
/// block size (so the row sums, and every bit, are its); None when there is nothing to do.
fn qk_grid(op: &str, a: &Args) -> Result<Option<LaunchConfig>> {
    let heads = a.n_heads + a.n_kv_heads;
    if a.tokens == 0 || heads == 0 || a.head_dim == 0 {
        return Ok(None);
    }
    ensure!(
        a.tokens < i32::MAX as usize && heads <= 65535,
        "{op}: {} tokens × {heads} heads exceed one launch (2^31 − 1 × 65535)",
        a.tokens
    );
    Ok(Some(LaunchConfig {
        grid_dim: (a.tokens as u32, heads as u32, 1),
        block_dim: (row_threads(a.head_dim), 1, 1),
        shared_mem_bytes: 0,
    }))
}

/// The launch both kernels share: the rotation, the grid (None: nothing to do) and the head
/// counts as the kernels take them.
fn launch(op: &str, a: &Args) -> Result<Option<(RopeDims, LaunchConfig, [i32; 3])>> {
    let dims = rope_dims(op, a.rope, a.head_dim)?;
    let Some(cfg) = qk_grid(op, a)? else {
        return Ok(None);
    };
    let heads = [
        dim_i32(a.n_heads, "n_heads")?,
        dim_i32(a.n_kv_heads, "n_kv_heads")?,
        dim_i32(a.head_dim, "head_dim")?,
    ];
    Ok(Some((dims, cfg, heads)))
}

/// Every length the kernels read or write; gives the head rows of q and of k.
fn check_lengths(
    be: &Cuda,
    op: &str,
    a: &Args,
    q: &CudaBuf,
    k: &CudaBuf,
    rstd_q: &CudaBuf,
    rstd_k: &CudaBuf,
) -> Result<(usize, usize)> {
    let (qn, kn, hd) = check_qk_norm(be, op, a)?;
    need(q, qn * hd, "q")?;
    need(k, kn * hd, "k")?;
    need(a.q_raw, qn * hd, "q_raw")?;
    need(a.k_raw, kn * hd, "k_raw")?;
    need(rstd_q, qn, "rstd_q")?;
    need(rstd_k, kn, "rstd_k")?;
    need_ids(a.positions, a.tokens, "positions")?;
    Ok((qn, kn))
}

impl Cuda {
    pub(super) fn qk_norm_rope_forward_impl(
        &self,
        q: &mut CudaBuf,
        k: &mut CudaBuf,
        rstd_q: &mut CudaBuf,
        rstd_k: &mut CudaBuf,
        a: &Args,
        eps: f32,
    ) -> Result<()> {
        let op = "qk_norm_rope_forward";
        check_lengths(self, op, a, q, k, rstd_q, rstd_k)?;
        let Some((dims, cfg, [h, hkv, hd])) = launch(op, a)? else {
            return Ok(());
        };
        kernels::qk_norm_rope_forward(
            self,
            cfg,
            q,
            k,
            rstd_q,
            rstd_k,
            a.q_raw,
            a.k_raw,
            a.q_norm,
            a.k_norm,
            a.positions,
            &a.rope.inv_freq,
            &h,
            &hkv,
            &hd,
            &eps,
            &dims,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn qk_norm_rope_backward_impl(
        &self,
        dq_raw: &mut CudaBuf,
        dk_raw: &mut CudaBuf,
        dq_norm: &mut CudaBuf,
        dk_norm: &mut CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        rstd_q: &CudaBuf,
        rstd_k: &CudaBuf,
        a: &Args,
    ) -> Result<()> {
        let op = "qk_norm_rope_backward";
        let (qn, kn) = check_lengths(self, op, a, dq, dk, rstd_q, rstd_k)?;
        need(dq_raw, qn * a.head_dim, "dq_raw")?;
        need(dk_raw, kn * a.head_dim, "dk_raw")?;
        need(dq_norm, a.head_dim, "dq_norm")?;
        need(dk_norm, a.head_dim, "dk_norm")?;
        let Some((dims, cfg, [h, hkv, hd])) = launch(op, a)? else {
            return Ok(());
        };
        kernels::qk_norm_rope_backward_input(
            self,
            cfg,
            dq_raw,
            dk_raw,
            dq,
            dk,
            a.q_raw,
            a.k_raw,
            a.q_norm,
            a.k_norm,
            rstd_q,
            rstd_k,
            a.positions,
            &a.rope.inv_freq,
            &h,
            &hkv,
            &hd,
            &dims,
        )?;
        // dq, dk now hold the gradients of the normed q, k: the weights' sums as before
        for (dw, dy, x, rstd, rows) in [
            (dq_norm, &*dq, a.q_raw, rstd_q, qn),
            (dk_norm, &*dk, a.k_raw, rstd_k, kn),
        ] {
            let (cfg, per_slice) = grid_cols(a.head_dim, rows);
            let rows = rows as i64;
            kernels::rmsnorm_backward_weight(self, cfg, dw, dy, x, rstd, &rows, &hd, &per_slice)?;
        }
        Ok(())
    }
}
