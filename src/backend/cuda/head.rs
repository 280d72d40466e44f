//! Launchers for the training head and the sampler: kernels/fused_logprob.cu (vocabulary
//! streamed in chunks, one cuBLAS GEMM per chunk) and kernels/sampling.cu.
//!
//! In `GemmPrecision::Bf16` the hidden states are converted to bf16 once per call and the
//! chunk gradient `g` is written in bf16 by its kernel (shared by its two GEMMs): the chunk is only
//! 64 MiB / (4·n) columns wide (256 at n = 65536), so converting `hidden` in every chunk's GEMM
//! would move ~n·d·6 bytes × (vocab / chunk) — about 200 GB per pass at n = 65536, d = 896,
//! more than the GEMMs' own time. The weight is read through its cached bf16 copy
//! (`buffer.rs`, converted once per optimiser step), each chunk a row range of it.

use super::gemm::Bf16Operand;
use super::kernels;
use super::{dim_i32, grid_1d, grid_rows, need, need_ids, row_threads, Cuda, CudaBuf};
use crate::backend::Backend;
use anyhow::{ensure, Context, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

/// Logit scratch per chunk: rows × chunk floats (64 MiB), the same trade as the CPU head.
const CHUNK_SCRATCH: usize = 1 << 24;

/// Vocabulary columns per chunk for `n` rows: as wide as the scratch allows, at least 256.
fn chunk_width(n: usize, vocab: usize) -> usize {
    (CHUNK_SCRATCH / n.max(1)).clamp(256, 16384).min(vocab)
}

impl Cuda {
    /// `hidden`'s bf16 values for the head's GEMMs in Bf16 mode: the final norm's own copy when
    /// it wrote one, else converted once into `converted` (`None` outside Bf16 mode).
    fn hidden_bf16<'h>(
        &self,
        hidden: &'h CudaBuf,
        converted: &'h mut Option<CudaSlice<bf16>>,
    ) -> Result<Option<&'h CudaSlice<bf16>>> {
        if let Some(copy) = self.input_bf16(hidden, "hidden")? {
            return Ok(Some(copy));
        }
        *converted = self.bf16_copy(hidden)?;
        Ok(converted.as_ref())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_logprob_forward_impl(
        &self,
        logp: &mut CudaSlice<f32>,
        entropy: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        hidden: &CudaBuf,
        w: &CudaBuf,
        targets: &CudaSlice<u32>,
        (n, dim, vocab): (usize, usize, usize),
        temperature: f32,
    ) -> Result<()> {
        ensure!(
            temperature > 0.0,
            "fused_logprob: temperature must be > 0, got {temperature}"
        );
        need(logp, n, "logp")?;
        need(entropy, n, "entropy")?;
        need(lse, n, "lse")?;
        need(hidden, n * dim, "hidden")?;
        need(w, vocab * dim, "w")?;
        need_ids(targets, n, "targets")?;
        ensure!(vocab > 0, "fused_logprob: vocab must be > 0");
        if n == 0 {
            return Ok(());
        }
        let chunk = chunk_width(n, vocab);
        let rows = n as i64;
        let inv_t = 1.0 / temperature;
        let (mut m, mut s0) = (self.zeros(n)?, self.zeros(n)?);
        let (mut s1, mut zt) = (self.zeros(n)?, self.zeros(n)?);
        kernels::logprob_state_init(self, grid_1d(n), &mut m, &mut s0, &mut s1, &mut zt, &rows)?;
        let mut z = self.zeros(n * chunk)?;
        // Bf16 mode: the hidden states are converted once for every chunk's GEMM
        let mut converted = None;
        let hidden16 = self.hidden_bf16(hidden, &mut converted)?;
        let w16 = self.weight_bf16(w)?;
        let mut c0 = 0;
        while c0 < vocab {
            let c = chunk.min(vocab - c0);
            let wc = w.slice(c0 * dim..(c0 + c) * dim);
            let wc16 = w16.map(|copy| Bf16Operand {
                copy,
                offset: c0 * dim,
            });
            self.gemm_pre(
                false,
                true,
                (n, c, dim),
                1.0,
                (hidden, dim, Bf16Operand::whole(hidden16)),
                (&wc, dim, wc16),
                0.0,
                (&mut z, c),
            )?;
            let (ci, c0i) = (dim_i32(c, "chunk")?, dim_i32(c0, "vocab offset")?);
            kernels::logprob_chunk_update(
                self,
                grid_rows(n, row_threads(c).min(256))?,
                &z,
                &ci,
                &c0i,
                targets,
                &inv_t,
                &mut m,
                &mut s0,
                &mut s1,
                &mut zt,
            )?;
            c0 += c;
        }
        kernels::logprob_finish(
            self,
            grid_1d(n),
            logp,
            entropy,
            lse,
            &m,
            &s0,
            &s1,
            &zt,
            &rows,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_logprob_backward_impl(
        &self,
        dhidden: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dlogp: &CudaSlice<f32>,
        hidden: &CudaBuf,
        w: &CudaBuf,
        targets: &CudaSlice<u32>,
        lse: &CudaSlice<f32>,
        (n, dim, vocab): (usize, usize, usize),
        temperature: f32,
    ) -> Result<()> {
        ensure!(
            temperature > 0.0,
            "fused_logprob: temperature must be > 0, got {temperature}"
        );
        need(dhidden, n * dim, "dhidden")?;
        need(dw, vocab * dim, "dw")?;
        need(dlogp, n, "dlogp")?;
        need(lse, n, "lse")?;
        need(hidden, n * dim, "hidden")?;
        need(w, vocab * dim, "w")?;
        need_ids(targets, n, "targets")?;
        if n == 0 || vocab == 0 {
            return Ok(());
        }
        let chunk = chunk_width(n, vocab);
        let rows = n as i64;
        let inv_t = 1.0 / temperature;
        let mut g = self.zeros(n * chunk)?;
        // Bf16 mode: hidden converted once for all chunks, g written in bf16 for its two GEMMs
        let mut converted = None;
        let hidden16 = self.hidden_bf16(hidden, &mut converted)?;
        let mut g16 = self.bf16_buffer(n * chunk)?;
        let w16 = self.weight_bf16(w)?;
        let mut c0 = 0;
        while c0 < vocab {
            let c = chunk.min(vocab - c0);
            let wc = w.slice(c0 * dim..(c0 + c) * dim);
            let wc16 = w16.map(|copy| Bf16Operand {
                copy,
                offset: c0 * dim,
            });
            // recompute the chunk's logits, turn them into d(loss)/d(logits): in place in f32,
            // or written to g16 in the bf16 mode
            self.gemm_pre(
                false,
                true,
                (n, c, dim),
                1.0,
                (hidden, dim, Bf16Operand::whole(hidden16)),
                (&wc, dim, wc16),
                0.0,
                (&mut g, c),
            )?;
            let (ci, c0i) = (dim_i32(c, "chunk")?, dim_i32(c0, "vocab offset")?);
            match g16.as_mut() {
                // bf16 GEMMs read only g's bf16 values: written directly, f32 g stays the logits
                Some(g16) => kernels::logprob_chunk_grad_bf16(
                    self,
                    grid_1d(n * c),
                    g16,
                    &g,
                    &rows,
                    &ci,
                    &c0i,
                    targets,
                    lse,
                    dlogp,
                    &inv_t,
                )?,
                None => kernels::logprob_chunk_grad(
                    self,
                    grid_1d(n * c),
                    &mut g,
                    &rows,
                    &ci,
                    &c0i,
                    targets,
                    lse,
                    dlogp,
                    &inv_t,
                )?,
            }
            // dhidden (=|+=) g · W_chunk: the first chunk writes, later ones accumulate
            let beta = if c0 == 0 { 0.0 } else { 1.0 };
            self.gemm_pre(
                false,
                false,
                (n, dim, c),
                1.0,
                (&g, c, Bf16Operand::whole(g16.as_ref())),
                (&wc, dim, wc16),
                beta,
                (dhidden, dim),
            )?;
            // dW_chunk += gᵀ · hidden
            let mut dwc = dw.slice_mut(c0 * dim..(c0 + c) * dim);
            self.gemm_pre(
                true,
                false,
                (c, dim, n),
                1.0,
                (&g, c, Bf16Operand::whole(g16.as_ref())),
                (hidden, dim, Bf16Operand::whole(hidden16)),
                1.0,
                (&mut dwc, dim),
            )?;
            c0 += c;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn sample_impl(
        &self,
        logits: &CudaSlice<f32>,
        uniforms: &[f32],
        batch: usize,
        vocab: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
    ) -> Result<Vec<u32>> {
        self.not_capturing("sample")?; // it reads results back to the host
        need(logits, batch * vocab, "logits")?;
        ensure!(
            uniforms.len() >= batch,
            "sample: {} uniforms for {batch} rows",
            uniforms.len()
        );
        ensure!(vocab > 0, "sample: vocab must be > 0");
        if batch == 0 {
            return Ok(Vec::new());
        }
        self.not_capturing("sample")?;
        let u = self
            .stream
            .clone_htod(&uniforms[..batch])
            .context("cuda backend: upload uniforms")?;
        // t and p = exp(−t) per token, each written before it is read (the greedy path reads
        // neither): not zeroed
        // SAFETY: sample_rows writes every element of a row before reading it.
        let mut t_scratch = unsafe { self.stream.alloc::<f32>(batch * vocab) }
            .context("cuda backend: allocating sampling scratch")?;
        let mut p_scratch = unsafe { self.stream.alloc::<f64>(batch * vocab) }
            .context("cuda backend: allocating sampling scratch")?;
        let mut tokens = self.alloc_u32(batch)?;
        let (vocab_i, top_k_i) = (
            dim_i32(vocab, "vocab")?,
            dim_i32(top_k.min(vocab), "top_k")?,
        );
        kernels::sample_rows(
            self,
            grid_rows(batch, kernels::defines::SAMPLE_THREADS as u32)?,
            &mut tokens,
            &mut t_scratch,
            &mut p_scratch,
            logits,
            &u,
            &vocab_i,
            &temperature,
            &top_p,
            &top_k_i,
        )?;
        let host = self
            .stream
            .clone_dtoh(&tokens)
            .context("cuda backend: download tokens")?;
        self.synchronize()?;
        Ok(host[..batch].to_vec())
    }
}
