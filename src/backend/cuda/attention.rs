//! Launchers for kernels/attention.cu (causal GQA training attention); the KV-cache decode's
//! are in decode.rs.

use super::kernels::{self, defines, AttnDims};
use super::{dim_i32, Cuda, CudaBuf};
use crate::backend::{AttnShape, Backend};
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Largest head_dim the kernels hold in registers/shared memory (`ATTN_MAX_HD`, `DEC_MAX_HD`).
const MAX_HEAD_DIM: usize = defines::ATTN_MAX_HD as usize;
const _: () = assert!(defines::ATTN_MAX_HD == defines::DEC_MAX_HD);
/// Query rows per forward/dq block and keys per dk/dv block, one warp each.
const ATTN_ROWS: usize = defines::ATTN_ROWS as usize;
const DKV_KEYS: usize = defines::DKV_KEYS as usize;

pub(super) fn check_heads(
    op: &str,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<()> {
    ensure!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        "cuda backend: {op}: {n_heads} heads not a multiple of {n_kv_heads} kv heads"
    );
    ensure!(
        (1..=MAX_HEAD_DIM).contains(&head_dim),
        "cuda backend: {op}: head_dim {head_dim} outside 1..={MAX_HEAD_DIM}"
    );
    Ok(())
}

pub(super) fn attn_dims(s: AttnShape) -> Result<AttnDims> {
    Ok(AttnDims {
        batch: dim_i32(s.batch, "batch")?,
        seq: dim_i32(s.seq, "seq")?,
        n_heads: dim_i32(s.n_heads, "n_heads")?,
        n_kv_heads: dim_i32(s.n_kv_heads, "n_kv_heads")?,
        head_dim: dim_i32(s.head_dim, "head_dim")?,
    })
}

/// grid.y/z carry heads and batch (limit 65535 each).
pub(super) fn grid_3d(x: usize, y: usize, z: usize, threads: u32) -> Result<LaunchConfig> {
    ensure!(
        y <= 65535 && z <= 65535,
        "cuda backend: launch grid ({x}, {y}, {z}) exceeds 65535 in y or z"
    );
    Ok(LaunchConfig {
        grid_dim: (x as u32, y as u32, z as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Head counts and buffer sizes of a forward call, shared by both implementations; false
/// when there is nothing to compute. `lens`: the values held by `[out, lse, q, k, v]` (a
/// buffer narrowed to bf16 counts its bf16 values).
pub(super) fn check_forward_buffers(lens: [usize; 5], s: AttnShape) -> Result<bool> {
    check_heads("attention_forward", s.n_heads, s.n_kv_heads, s.head_dim)?;
    let n = s.batch * s.seq;
    let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let sizes = [n * qd, s.batch * s.n_heads * s.seq, n * qd, n * kd, n * kd];
    let names = ["out", "lse", "q", "k", "v"];
    for ((len, size), what) in lens.into_iter().zip(sizes).zip(names) {
        need_len(len, size, what)?;
    }
    Ok(n > 0)
}

/// The same for a backward call: the lengths of `[dq, dk, dv, dout, q, k, v, out, lse]`.
pub(super) fn check_backward_buffers(lens: [usize; 9], s: AttnShape) -> Result<bool> {
    check_heads("attention_backward", s.n_heads, s.n_kv_heads, s.head_dim)?;
    let n = s.batch * s.seq;
    let (qd, kd) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let sizes = [qd, kd, kd, qd, qd, kd, kd, qd].map(|w| n * w);
    let names = ["dq", "dk", "dv", "dout", "q", "k", "v", "out"];
    for ((len, size), what) in lens.into_iter().zip(sizes).zip(names) {
        need_len(len, size, what)?;
    }
    need_len(lens[8], s.batch * s.n_heads * s.seq, "lse")?;
    Ok(n > 0)
}

fn need_len(len: usize, need: usize, what: &str) -> Result<()> {
    ensure!(
        len >= need,
        "cuda backend: `{what}` holds {len} values, the op needs {need}"
    );
    Ok(())
}

impl Cuda {
    pub(super) fn attention_forward_impl(
        &self,
        out: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        s: AttnShape,
    ) -> Result<()> {
        if !check_forward_buffers([out.len(), lse.len(), q.len(), k.len(), v.len()], s)? {
            return Ok(());
        }
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let cfg = grid_3d(
            s.seq.div_ceil(ATTN_ROWS),
            s.n_heads,
            s.batch,
            32 * ATTN_ROWS as u32,
        )?;
        kernels::attention_forward(self, cfg, out, lse, q, k, v, &dims, &scale)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward_impl(
        &self,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
        dv: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &CudaBuf,
        lse: &CudaSlice<f32>,
        s: AttnShape,
    ) -> Result<()> {
        let lens = [dq, dk, dv, dout, q, k, v, lse].map(|b| b.len());
        let [dq_n, dk_n, dv_n, dout_n, q_n, k_n, v_n, lse_n] = lens;
        let lens = [
            dq_n,
            dk_n,
            dv_n,
            dout_n,
            q_n,
            k_n,
            v_n,
            out.logical_len(),
            lse_n,
        ];
        if !check_backward_buffers(lens, s)? {
            return Ok(());
        }
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let delta = self.attention_delta(dout, out, s)?;
        let cfg = grid_3d(
            s.seq.div_ceil(ATTN_ROWS),
            s.n_heads,
            s.batch,
            32 * ATTN_ROWS as u32,
        )?;
        kernels::attention_backward_dq(self, cfg, dq, dout, q, k, v, lse, &delta, &dims, &scale)?;
        let cfg = grid_3d(
            s.seq.div_ceil(DKV_KEYS),
            s.n_kv_heads,
            s.batch,
            32 * DKV_KEYS as u32,
        )?;
        kernels::attention_backward_dkv(
            self, cfg, dk, dv, dout, q, k, v, lse, &delta, &dims, &scale,
        )
    }

    /// δ[b, h, t] = Σ_d dout·out, the softmax-backward row term (shared with the tensor-core backwards),
    /// from the f32 `out` or, when the model kept it in bf16 alone (`keep_as_attention_output`),
    /// from its bf16 values.
    pub(super) fn attention_delta(
        &self,
        dout: &CudaSlice<f32>,
        out: &CudaBuf,
        s: AttnShape,
    ) -> Result<CudaBuf> {
        let dims = attn_dims(s)?;
        let rows = s.batch * s.n_heads * s.seq;
        let mut delta = self.zeros(rows)?;
        let warps_per_block = 8;
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(warps_per_block) as u32, 1, 1),
            block_dim: (32 * warps_per_block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        if out.is_narrowed() {
            let out16 = super::backend_impl::narrowed_copy(out, "attention_backward", "out")?;
            kernels::attention_backward_delta_bf16(self, cfg, &mut delta, dout, out16, &dims)?;
        } else {
            kernels::attention_backward_delta(self, cfg, &mut delta, dout, out, &dims)?;
        }
        Ok(delta)
    }
}
