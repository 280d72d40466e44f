//! Launchers for kernels/attention_wgmma.cu: causal GQA training attention, forward and
//! backward, on Hopper's warpgroup MMA (`wgmma.mma_async`, bf16 → f32), "attention v3",
//! selected with `CADA_ATTENTION=wgmma` on a compute-capability 9.0 device (H100/H200) only:
//! wgmma exists in the sm_90a cubin alone, and the compute_80 PTX other devices load has bodies
//! that trap. Same buffers, `lse` layout and bf16 operand copies as attention_mma.rs, whose
//! backward entry (δ, the copies) dispatches here.

use super::attention::{attn_dims, grid_3d};
use super::attention_mma::padded;
use super::buffer::CudaBuf;
use super::kernels::{self, defines};
use super::Cuda;
use crate::backend::AttnShape;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

/// Threads per block (two warpgroups).
const THREADS: u32 = defines::WGMMA_THREADS as u32;
/// Query rows per forward / dq block (64 per warpgroup).
const BLOCK_ROWS: usize = defines::WGMMA_BQ as usize;
/// Keys per tile streamed through a forward / dq block.
const BLOCK_KEYS: usize = defines::WGMMA_BK as usize;
/// Keys per dk/dv block (64 per warpgroup) and query rows per tile streamed through it.
const DKV_KEYS: usize = defines::WGMMA_DKV_BK as usize;
const DKV_QUERIES: usize = defines::WGMMA_DKV_BQ as usize;

/// Dynamic shared memory of each kernel at padded width `hdp`, bf16 tiles unpadded (the
/// core-matrix layout needs no skew): forward Q + 2 × (K, V); dq Q, dO + 2 × (K, V); dk/dv K, V
/// + 2 × (Q, dO) + 2 × (lse, δ) in f32.
fn wgmma_smem_bytes(kernel: &str, hdp: usize) -> usize {
    match kernel {
        "forward" => (BLOCK_ROWS + 4 * BLOCK_KEYS) * hdp * 2,
        "dq" => (2 * BLOCK_ROWS + 4 * BLOCK_KEYS) * hdp * 2,
        _ => (2 * DKV_KEYS + 4 * DKV_QUERIES) * hdp * 2 + 4 * DKV_QUERIES * 4,
    }
}

/// Every wgmma kernel with its shared-memory layout and padded width.
const WGMMA_KERNELS: [(&str, &str, usize); 6] = [
    ("attention_wgmma_forward_hd64", "forward", 64),
    ("attention_wgmma_forward_hd128", "forward", 128),
    ("attention_wgmma_backward_dq_hd64", "dq", 64),
    ("attention_wgmma_backward_dq_hd128", "dq", 128),
    ("attention_wgmma_backward_dkv_hd64", "dkv", 64),
    ("attention_wgmma_backward_dkv_hd128", "dkv", 128),
];

impl Cuda {
    /// On a 9.0 device, opts every wgmma kernel into the shared memory it uses (up to 129 KiB),
    /// once at start-up. Elsewhere nothing: they are never launched there.
    pub(super) fn opt_in_wgmma_shared_memory(&self) -> Result<()> {
        if !self.supports_wgmma() {
            return Ok(());
        }
        for (name, kind, hdp) in WGMMA_KERNELS {
            let attr = CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            let bytes = wgmma_smem_bytes(kind, hdp) as i32;
            self.function(name)?
                .set_attribute(attr, bytes)
                .map_err(|e| {
                    anyhow!("cuda backend: `{name}` refused {bytes} B of shared memory: {e:?}")
                })?;
        }
        Ok(())
    }

    /// Whether this device runs the wgmma attention (compute capability 9.0).
    pub fn supports_wgmma(&self) -> bool {
        self.compute_capability == (9, 0)
    }

    /// The error for a wgmma selection on a device that is not compute capability 9.0.
    pub(super) fn require_wgmma_device(&self) -> Result<()> {
        let (major, minor) = self.compute_capability;
        ensure!(
            self.supports_wgmma(),
            "cuda backend: CADA_ATTENTION=wgmma needs a compute capability 9.0 GPU (H100/H200: \
             wgmma is built into the sm_90a cubin only); this device is {major}.{minor}: use \
             `mma` or `simt`"
        );
        Ok(())
    }

    /// The forward's launch, given the bf16 copies of q, k and v that
    /// `attention_mma_forward_impl` checked and made.
    pub(super) fn attention_wgmma_forward_launch(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        [qb, kb, vb]: [&CudaSlice<bf16>; 3],
        s: AttnShape,
    ) -> Result<()> {
        self.require_wgmma_device()?;
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let hdp = padded(s.head_dim);
        let grid = (s.seq.div_ceil(BLOCK_ROWS), s.n_heads, s.batch);
        let cfg = wgmma_config(grid, wgmma_smem_bytes("forward", hdp))?;
        kernels::attention_wgmma_forward_hd(self, hdp, cfg, out, lse, qb, kb, vb, &dims, &scale)
    }

    /// The backward's two launches (dq; dk and dv), given δ and the bf16 copies of dO, q, k
    /// and v that `attention_mma_backward_impl` checked and made.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_wgmma_backward_launch(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        [dob, qb, kb, vb]: [&CudaSlice<bf16>; 4],
        lse: &CudaBuf,
        delta: &CudaBuf,
        s: AttnShape,
    ) -> Result<()> {
        self.require_wgmma_device()?;
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let hdp = padded(s.head_dim);
        let grid = (s.seq.div_ceil(BLOCK_ROWS), s.n_heads, s.batch);
        let cfg = wgmma_config(grid, wgmma_smem_bytes("dq", hdp))?;
        kernels::attention_wgmma_backward_dq_hd(
            self, hdp, cfg, dq, dob, qb, kb, vb, lse, delta, &dims, &scale,
        )?;
        let grid = (s.seq.div_ceil(DKV_KEYS), s.n_kv_heads, s.batch);
        let cfg = wgmma_config(grid, wgmma_smem_bytes("dkv", hdp))?;
        kernels::attention_wgmma_backward_dkv_hd(
            self, hdp, cfg, dk, dv, dob, qb, kb, vb, lse, delta, &dims, &scale,
        )
    }
}

impl Cuda {
    /// Runs kernels/wgmma_probe.cu once (compute capability 9.0 only): `(A·Bᵀ, A·W)` for
    /// row-major `a` 64×16, `bt` 64×16 and `w` 16×64 (rounded to bf16 on the way in), each
    /// 64×64 row-major, through the two wgmma forms the attention kernels use. For the GPU
    /// tests: which of the two is wrong, if either, says which layout is.
    pub fn wgmma_layout_probe(
        &self,
        a: &[f32],
        bt: &[f32],
        w: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.require_wgmma_device()?;
        ensure!(
            a.len() == 64 * 16 && bt.len() == 64 * 16 && w.len() == 16 * 64,
            "wgmma_layout_probe: expected 64×16, 64×16 and 16×64 inputs"
        );
        let bf = |x: &[f32], what| -> Result<CudaSlice<bf16>> {
            let buf = self.upload_impl(x)?;
            self.to_bf16(&buf, what)
        };
        let (ab, bb, wb) = (bf(a, "a")?, bf(bt, "bt")?, bf(w, "w")?);
        let mut d_ss = self.upload_impl(&vec![f32::NAN; 64 * 64])?;
        let mut d_rs = self.upload_impl(&vec![f32::NAN; 64 * 64])?;
        let mut cfg = grid_3d(1, 1, 1, defines::WGMMA_PROBE_THREADS as u32)?;
        cfg.shared_mem_bytes = 3 * 1024 * 2;
        kernels::wgmma_layout_probe(self, cfg, &mut d_ss, &mut d_rs, &ab, &bb, &wb)?;
        Ok((self.download_impl(&d_ss)?, self.download_impl(&d_rs)?))
    }
}

/// Launch config: 256 threads, `bytes` of dynamic shared memory (opted in at start-up).
fn wgmma_config((x, y, z): (usize, usize, usize), bytes: usize) -> Result<LaunchConfig> {
    let mut cfg = grid_3d(x, y, z, THREADS)?;
    cfg.shared_mem_bytes = bytes as u32;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures kernels/emulation/attention_wgmma_check.cpp static_asserts (and checks that
    /// no block writes past); all fit a Hopper SM's 227 KiB.
    #[test]
    fn shared_memory_sizes() {
        assert_eq!(wgmma_smem_bytes("forward", 64), 49_152);
        assert_eq!(wgmma_smem_bytes("forward", 128), 98_304);
        assert_eq!(wgmma_smem_bytes("dq", 64), 65_536);
        assert_eq!(wgmma_smem_bytes("dq", 128), 131_072);
        assert_eq!(wgmma_smem_bytes("dkv", 64), 66_560);
        assert_eq!(wgmma_smem_bytes("dkv", 128), 132_096);
    }

    #[test]
    fn opt_in_list_names_every_wgmma_kernel() {
        let compiled = super::super::kernel_names("attention_wgmma");
        let listed: Vec<&str> = WGMMA_KERNELS.iter().map(|k| k.0).collect();
        assert_eq!(
            listed, compiled,
            "WGMMA_KERNELS and kernel_names() disagree"
        );
    }
}
