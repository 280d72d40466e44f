//! Launchers for kernels/attention_mma.cu: causal GQA training attention on bf16 tensor cores
//! (`mma.sync.m16n8k16`, f32 accumulation), "attention v2". Same buffers, shapes and `lse`
//! layout as the f32 kernels of attention.rs, so a forward from one and a backward from the other
//! agree; δ = rowsum(dO∘O) comes from attention.cu's `attention_backward_delta`.
//!
//! The kernels read q, k, v and dO in bf16 (their tiles go to shared memory by `cp.async`,
//! which copies bytes and cannot convert). Each is converted once (round to nearest even, the
//! rounding the kernels applied themselves when they read f32) and the copy is cached on its
//! buffer (`CudaBuf`), so the backward reuses the forward's copies of q, k and v. The model
//! narrows q, k and v to those copies (`keep_as_attention_input`): then only bf16 is stored.
//!
//! Every head_dim in 1..=128 is supported: the kernels exist for padded widths 64 and 128 and
//! stage the columns past head_dim as zeros.

use super::attention::{attn_dims, check_backward_buffers, check_forward_buffers, grid_3d};
use super::buffer::CudaBuf;
use super::kernels::{self, defines};
use super::{AttentionKernel, Cuda};
use crate::backend::AttnShape;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

/// Threads per block (4 warps).
const THREADS: u32 = defines::MMA_THREADS as u32;
/// Query rows per forward/dq block.
const BLOCK_ROWS: usize = defines::MMA_BQ as usize;
/// Keys per staged tile in forward/dq and per dk/dv block; query rows per dk/dv tile.
const BLOCK_KEYS: usize = defines::MMA_BK as usize;
const DKV_QUERIES: usize = defines::MMA_DKV_BQ as usize;
/// bf16 pad per shared-memory row.
const SKEW: usize = defines::MMA_SKEW as usize;
/// Dynamic shared memory beyond this needs the per-function opt-in.
const DEFAULT_SMEM: usize = 48 * 1024;

/// The padded head width the kernels are instantiated for (`_hd64`, `_hd128`).
pub(super) fn padded(head_dim: usize) -> usize {
    if head_dim <= 64 {
        64
    } else {
        128
    }
}

/// Dynamic shared memory of each kernel, as laid out in attention_mma.cu (the streamed tiles
/// have two slots each: the next one is fetched while this one is used).
fn smem_bytes(kernel: &str, hdp: usize) -> usize {
    let row = (hdp + SKEW) * 2; // one bf16 tile row
    match kernel {
        "forward" => 2 * 2 * BLOCK_KEYS * row, // 2 × (K, V); Q staged through the second K
        "dq" => (2 * BLOCK_ROWS + 2 * 2 * BLOCK_KEYS) * row, // Q, dO, 2 × (K, V)
        // K, V, 2 × (Q, dO), 2 × (lse, δ)
        _ => (2 * BLOCK_KEYS + 2 * 2 * DKV_QUERIES) * row + 2 * 2 * DKV_QUERIES * 4,
    }
}

/// Every mma kernel with the shared-memory layout it uses (`smem_bytes`) and its padded width.
const MMA_KERNELS: [(&str, &str, usize); 6] = [
    ("attention_mma_forward_hd64", "forward", 64),
    ("attention_mma_forward_hd128", "forward", 128),
    ("attention_mma_backward_dq_hd64", "dq", 64),
    ("attention_mma_backward_dq_hd128", "dq", 128),
    ("attention_mma_backward_dkv_hd64", "dkv", 64),
    ("attention_mma_backward_dkv_hd128", "dkv", 128),
];

impl Cuda {
    /// Opts the kernels that need more than 48 KiB of dynamic shared memory in, once at start-up
    /// (each kernel's size is fixed by its padded width), instead of before every launch. Every
    /// kernel is tried, so a device that refuses one (dq at hd128 on sm_86/89) still has the
    /// others; the error names each refused kernel, whose launches then fail with the driver's
    /// error.
    pub(super) fn opt_in_mma_shared_memory(&self) -> Result<()> {
        let mut refused = Vec::new();
        for (name, kind, hdp) in MMA_KERNELS {
            let bytes = smem_bytes(kind, hdp);
            if bytes > DEFAULT_SMEM {
                let attr =
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                if let Err(e) = self.function(name)?.set_attribute(attr, bytes as i32) {
                    refused.push(format!("`{name}` ({bytes} B of shared memory: {e:?})"));
                }
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "cuda backend: this device refused {}",
                refused.join(", ")
            ))
        }
    }

    /// Launch config with `bytes` of dynamic shared memory (opted in by
    /// `opt_in_mma_shared_memory`).
    fn mma_config(&self, (x, y, z): (usize, usize, usize), bytes: usize) -> Result<LaunchConfig> {
        let mut cfg = grid_3d(x, y, z, THREADS)?;
        cfg.shared_mem_bytes = bytes as u32;
        Ok(cfg)
    }

    /// The bf16 copy the kernels read: the buffer's cached (or narrowed) copy, else converted
    /// now and cached.
    fn attention_operand<'b>(&self, buf: &'b CudaBuf, what: &str) -> Result<&'b CudaSlice<bf16>> {
        if let Some(copy) = buf.bf16_cached() {
            return Ok(copy);
        }
        ensure!(
            !buf.is_narrowed(),
            "cuda backend: `{what}` was narrowed but lost its bf16 copy"
        );
        Ok(buf.cache_bf16(self.to_bf16(buf, what)?))
    }

    /// `keep_as_attention_input`: with a tensor-core attention (mma, wgmma), keeps only the bf16 copy its kernels
    /// read (converted now, or the one already cached) and frees the f32 values. The simt
    /// attention reads f32, so it keeps them (as does `set_narrow_saved_inputs(false)`).
    pub(super) fn narrow_attention_input(&self, buf: &mut CudaBuf) -> Result<()> {
        if !self.narrow_inputs
            || !self.attention.reads_bf16()
            || buf.is_narrowed()
            || buf.is_empty()
        {
            return Ok(());
        }
        self.narrow_now(buf, "attention input")
    }

    /// The tensor-core forward: checks and the bf16 operand copies, then the mma kernel, or the
    /// wgmma one when `CADA_ATTENTION=wgmma` (attention_wgmma.rs).
    pub(super) fn attention_mma_forward_impl(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        s: AttnShape,
    ) -> Result<()> {
        // q, k, v may be narrowed (read in bf16); out and lse are written in f32
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
        if self.attention == AttentionKernel::Wgmma {
            return self.attention_wgmma_forward_launch(out, lse, [qb, kb, vb], s);
        }
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let hdp = padded(s.head_dim);
        let grid = (s.seq.div_ceil(BLOCK_ROWS), s.n_heads, s.batch);
        let cfg = self.mma_config(grid, smem_bytes("forward", hdp))?;
        kernels::attention_mma_forward_hd(self, hdp, cfg, out, lse, qb, kb, vb, &dims, &scale)
    }

    /// The tensor-core backward: δ, the bf16 operand copies, then the mma kernels, or the
    /// wgmma ones when `CADA_ATTENTION=wgmma` (attention_wgmma.rs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_mma_backward_impl(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        s: AttnShape,
    ) -> Result<()> {
        // the outputs, dout and lse are f32; q, k, v and out may be narrowed (read in bf16)
        let [q_n, k_n, v_n, out_n] = [q, k, v, out].map(|b| b.logical_len());
        let lens = [
            dq.len(),
            dk.len(),
            dv.len(),
            dout.len(),
            q_n,
            k_n,
            v_n,
            out_n,
            lse.len(),
        ];
        if !check_backward_buffers(lens, s)? {
            return Ok(());
        }
        let dims = attn_dims(s)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        ensure!(
            !dout.is_narrowed(),
            "attention_backward: `dout` was kept only in bf16; δ = rowsum(dO∘O) reads it in f32"
        );
        let delta = self.attention_delta(dout, out, s)?;
        let (dob, qb, kb, vb) = (
            self.attention_operand(dout, "dout")?,
            self.attention_operand(q, "q")?,
            self.attention_operand(k, "k")?,
            self.attention_operand(v, "v")?,
        );
        let hdp = padded(s.head_dim);
        if self.attention == AttentionKernel::Wgmma {
            let inputs = [dob, qb, kb, vb];
            return self.attention_wgmma_backward_launch(dq, dk, dv, inputs, lse, &delta, s);
        }
        let grid = (s.seq.div_ceil(BLOCK_ROWS), s.n_heads, s.batch);
        let cfg = self.mma_config(grid, smem_bytes("dq", hdp))?;
        kernels::attention_mma_backward_dq_hd(
            self, hdp, cfg, dq, dob, qb, kb, vb, lse, &delta, &dims, &scale,
        )?;
        let grid = (s.seq.div_ceil(BLOCK_KEYS), s.n_kv_heads, s.batch);
        let cfg = self.mma_config(grid, smem_bytes("dkv", hdp))?;
        kernels::attention_mma_backward_dkv_hd(
            self, hdp, cfg, dk, dv, dob, qb, kb, vb, lse, &delta, &dims, &scale,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte counts the kernels index (attention_mma.cu's tile layout, double-buffered): the
    /// Rust side must reserve at least this much (kernels/emulation/ checks that no block writes
    /// past it, and static_asserts the same figures), and all fit a Hopper or A100 SM (227 / 163 KiB per block). dq at hd128 does not
    /// fit sm_86/sm_89 (99 KiB): the start-up opt-in then reports that the mma attention will
    /// not launch there.
    #[test]
    fn shared_memory_sizes() {
        assert_eq!(smem_bytes("forward", 64), 36_864);
        assert_eq!(smem_bytes("forward", 128), 69_632);
        assert_eq!(smem_bytes("dq", 64), 55_296);
        assert_eq!(smem_bytes("dq", 128), 104_448);
        assert_eq!(smem_bytes("dkv", 64), 37_376);
        assert_eq!(smem_bytes("dkv", 128), 70_144);
        assert_eq!(padded(1), 64);
        assert_eq!(padded(64), 64);
        assert_eq!(padded(65), 128);
        assert_eq!(padded(128), 128);
    }

    #[test]
    fn opt_in_list_names_every_mma_kernel() {
        let compiled = super::super::kernel_names("attention_mma");
        let listed: Vec<&str> = MMA_KERNELS.iter().map(|k| k.0).collect();
        assert_eq!(listed, compiled, "MMA_KERNELS and kernel_names() disagree");
        for (name, kind, hdp) in MMA_KERNELS {
            assert!(
                name.contains(kind) && name.ends_with(&format!("hd{hdp}")),
                "{name}"
            );
        }
    }

    #[test]
    fn attention_kernel_choice() {
        use crate::backend::cuda::AttentionKernel;
        assert_eq!(AttentionKernel::parse(None).unwrap(), AttentionKernel::Simt);
        assert_eq!(
            AttentionKernel::parse(Some("simt")).unwrap(),
            AttentionKernel::Simt
        );
        assert_eq!(
            AttentionKernel::parse(Some("mma")).unwrap(),
            AttentionKernel::Mma
        );
        assert_eq!(
            AttentionKernel::parse(Some("wgmma")).unwrap(),
            AttentionKernel::Wgmma
        );
        let e = AttentionKernel::parse(Some("MMA")).unwrap_err().to_string();
        assert!(
            e.contains("CADA_ATTENTION") && e.contains("`simt`, `mma` or `wgmma`"),
            "{e}"
        );
    }
}
