//! Launcher for kernels/attention_wgmma.cu: the causal GQA training-attention forward on
//! Hopper's warpgroup MMA (`wgmma.mma_async`, bf16 → f32), "attention v3", selected with
//! `CADA_ATTENTION=wgmma` on a compute-capability 9.0 device (H100/H200) only: wgmma exists
//! in the sm_90a cubin alone, and the compute_80 PTX other devices load has a body that traps.
//! Its backward is attention_mma.cu's (the same `lse` layout and bf16 operand copies), so
//! the selection changes the forward only.

use super::attention::{attn_dims, check_forward_buffers, grid_3d};
use super::attention_mma::padded;
use super::buffer::CudaBuf;
use super::kernels::{self, defines};
use super::Cuda;
use crate::backend::AttnShape;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;

/// Threads per block (two warpgroups).
const THREADS: u32 = defines::WGMMA_THREADS as u32;
/// Query rows per block (64 per warpgroup).
const BLOCK_ROWS: usize = defines::WGMMA_BQ as usize;
/// Keys per staged tile.
const BLOCK_KEYS: usize = defines::WGMMA_BK as usize;

/// Dynamic shared memory of the forward at padded width `hdp`: Q (128 rows), then two slots of
/// (K, V) (64 rows each), bf16, unpadded (the core-matrix layout has no bank conflicts to skew).
pub(super) fn wgmma_smem_bytes(hdp: usize) -> usize {
    (BLOCK_ROWS + 4 * BLOCK_KEYS) * hdp * 2
}

const WGMMA_KERNELS: [(&str, usize); 2] = [
    ("attention_wgmma_forward_hd64", 64),
    ("attention_wgmma_forward_hd128", 128),
];

impl Cuda {
    /// On a 9.0 device, opts both forward kernels into the shared memory they use (hd128 needs
    /// 96 KiB), once at start-up. Elsewhere nothing: they are never launched there.
    pub(super) fn opt_in_wgmma_shared_memory(&self) -> Result<()> {
        if !self.supports_wgmma() {
            return Ok(());
        }
        for (name, hdp) in WGMMA_KERNELS {
            let attr = CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            let bytes = wgmma_smem_bytes(hdp) as i32;
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

    pub(super) fn attention_wgmma_forward_impl(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        s: AttnShape,
    ) -> Result<()> {
        self.require_wgmma_device()?;
        let lens = [
            out.len(),
            lse.len(),
            q.logical_len(),
            k.logical_len(),
            v.logical_len(),
        ];
        if !check_forward_buffers(lens, s)? {
            return Ok(());
        }
        let (qb, kb, vb) = (
            self.attention_operand(q, "q")?,
            self.attention_operand(k, "k")?,
            self.attention_operand(v, "v")?,
        );
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let hdp = padded(s.head_dim);
        let mut cfg = grid_3d(s.seq.div_ceil(BLOCK_ROWS), s.n_heads, s.batch, THREADS)?;
        cfg.shared_mem_bytes = wgmma_smem_bytes(hdp) as u32;
        kernels::attention_wgmma_forward_hd(self, hdp, cfg, out, lse, qb, kb, vb, &dims, &scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures kernels/emulation/attention_wgmma_check.cpp static_asserts (and checks that
    /// no block writes past); both fit a Hopper SM's 227 KiB.
    #[test]
    fn shared_memory_sizes() {
        assert_eq!(wgmma_smem_bytes(64), 49_152);
        assert_eq!(wgmma_smem_bytes(128), 98_304);
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
