//! Launchers for the training head and the sampler: kernels/fused_logprob.cu (vocabulary
//! streamed in chunks, one cuBLAS GEMM per chunk), kernels/grpo_loss.cu and kernels/sampling.cu.
//!
//! In `GemmPrecision::Bf16` the hidden states are converted to bf16 once per call and the
//! chunk gradient `g` once per chunk (shared by its two GEMMs): the chunk is only
//! 64 MiB / (4·n) columns wide (256 at n = 65536), so converting `hidden` in every chunk's GEMM
//! would move ~n·d·6 bytes × (vocab / chunk) — about 200 GB per pass at n = 65536, d = 896,
//! more than the GEMMs' own time. Each weight chunk is converted once per pass too (in the
//! backward once for its two GEMMs).

use super::{dim_i32, grid_1d, grid_rows, launch, need, need_ids, row_threads, Cuda};
use crate::backend::cpu::grpo_loss::check_grpo_inputs;
use crate::backend::{Backend, GrpoLossConfig, GrpoLossMetrics, LossType};
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

/// Logit scratch per chunk: rows × chunk floats (64 MiB), the same trade as the CPU head.
const CHUNK_SCRATCH: usize = 1 << 24;

/// Vocabulary columns per chunk for `n` rows: as wide as the scratch allows, at least 256.
fn chunk_width(n: usize, vocab: usize) -> usize {
    (CHUNK_SCRATCH / n.max(1)).clamp(256, 16384).min(vocab)
}

/// Mirrors `struct GrpoParams` in grpo_loss.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct GrpoParams {
    epsilon_low: f32,
    epsilon_high: f32,
    beta: f32,
    use_ref: i32,
    loss_type: i32,
    max_completion_len: i32,
}
// SAFETY: #[repr(C)] struct of 4-byte scalars, the same layout as the C struct.
unsafe impl DeviceRepr for GrpoParams {}

fn grpo_params(cfg: &GrpoLossConfig) -> Result<GrpoParams> {
    Ok(GrpoParams {
        epsilon_low: cfg.epsilon_low,
        epsilon_high: cfg.epsilon_high,
        beta: cfg.beta,
        use_ref: (cfg.beta != 0.0) as i32,
        loss_type: match cfg.loss_type {
            LossType::Grpo => 0,
            LossType::Dapo => 1,
            LossType::DrGrpo => 2,
        },
        max_completion_len: dim_i32(cfg.max_completion_len, "max_completion_len")?,
    })
}

impl Cuda {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_logprob_forward_impl(
        &self,
        logp: &mut CudaSlice<f32>,
        entropy: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        hidden: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
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
        launch!(
            self,
            "logprob_state_init",
            grid_1d(n),
            &mut m,
            &mut s0,
            &mut s1,
            &mut zt,
            &rows
        )?;
        let mut z = self.zeros(n * chunk)?;
        // Bf16 mode: the hidden states are converted once for every chunk's GEMM
        let hidden16 = self.bf16_copy(hidden)?;
        let mut c0 = 0;
        while c0 < vocab {
            let c = chunk.min(vocab - c0);
            let wc = w.slice(c0 * dim..(c0 + c) * dim);
            self.gemm_pre(
                false,
                true,
                (n, c, dim),
                1.0,
                (hidden, dim, hidden16.as_ref()),
                (&wc, dim, None),
                0.0,
                (&mut z, c),
            )?;
            let (ci, c0i) = (dim_i32(c, "chunk")?, dim_i32(c0, "vocab offset")?);
            launch!(
                self,
                "logprob_chunk_update",
                grid_rows(n, row_threads(c).min(256))?,
                &z,
                &ci,
                &c0i,
                targets,
                &inv_t,
                &mut m,
                &mut s0,
                &mut s1,
                &mut zt
            )?;
            c0 += c;
        }
        launch!(
            self,
            "logprob_finish",
            grid_1d(n),
            logp,
            entropy,
            lse,
            &m,
            &s0,
            &s1,
            &zt,
            &rows
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_logprob_backward_impl(
        &self,
        dhidden: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dlogp: &CudaSlice<f32>,
        hidden: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
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
        // Bf16 mode: hidden converted once for all chunks, g once per chunk for its two GEMMs
        let hidden16 = self.bf16_copy(hidden)?;
        let mut g16 = self.bf16_buffer(n * chunk)?;
        // the weight chunk feeds two GEMMs too: converted once per chunk
        let mut w16 = self.bf16_buffer(chunk * dim)?;
        let mut c0 = 0;
        while c0 < vocab {
            let c = chunk.min(vocab - c0);
            let wc = w.slice(c0 * dim..(c0 + c) * dim);
            if let Some(w16) = w16.as_mut() {
                self.refresh_bf16(w16, &wc, c * dim)?;
            }
            // recompute the chunk's logits, turn them into d(loss)/d(logits) in place
            self.gemm_pre(
                false,
                true,
                (n, c, dim),
                1.0,
                (hidden, dim, hidden16.as_ref()),
                (&wc, dim, w16.as_ref()),
                0.0,
                (&mut g, c),
            )?;
            let (ci, c0i) = (dim_i32(c, "chunk")?, dim_i32(c0, "vocab offset")?);
            launch!(
                self,
                "logprob_chunk_grad",
                grid_1d(n * c),
                &mut g,
                &rows,
                &ci,
                &c0i,
                targets,
                lse,
                dlogp,
                &inv_t
            )?;
            if let Some(g16) = g16.as_mut() {
                self.refresh_bf16(g16, &g, n * c)?;
            }
            // dhidden (=|+=) g · W_chunk: the first chunk writes, later ones accumulate
            let beta = if c0 == 0 { 0.0 } else { 1.0 };
            self.gemm_pre(
                false,
                false,
                (n, dim, c),
                1.0,
                (&g, c, g16.as_ref()),
                (&wc, dim, w16.as_ref()),
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
                (&g, c, g16.as_ref()),
                (hidden, dim, hidden16.as_ref()),
                1.0,
                (&mut dwc, dim),
            )?;
            c0 += c;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn grpo_loss_forward_impl(
        &self,
        logp: &CudaSlice<f32>,
        old_logp: &CudaSlice<f32>,
        ref_logp: &CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        advantages: &CudaSlice<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<GrpoLossMetrics> {
        check_grpo_inputs(
            "grpo_loss_forward",
            logp.len(),
            old_logp.len(),
            ref_logp.len(),
            mask.len(),
            advantages.len(),
            batch,
            len,
            cfg,
        )?;
        if batch == 0 {
            return Ok(GrpoLossMetrics::default());
        }
        let params = grpo_params(cfg)?;
        // Without a KL term ref_logp may be empty: pass logp (never read) in its place.
        let reference = if cfg.beta != 0.0 { ref_logp } else { logp };
        let len_i = dim_i32(len, "len")?;
        let mut partials = self.alloc_f64(batch * 5)?;
        launch!(
            self,
            "grpo_loss_forward",
            grid_rows(batch, 256)?,
            &mut partials,
            logp,
            old_logp,
            reference,
            mask,
            advantages,
            &len_i,
            &params
        )?;
        let rows = self
            .stream
            .clone_dtoh(&partials)
            .context("cuda backend: download")?;
        self.synchronize()?;
        let mut sums = [0f64; 5];
        let mut grpo_loss = 0f64;
        for row in rows.chunks_exact(5).take(batch) {
            for (acc, v) in sums.iter_mut().zip(row) {
                *acc += v;
            }
            // grpo: each completion's mean over its own tokens
            grpo_loss += row[0] / (row[4].max(1.0) * batch as f64);
        }
        let [loss_sum, kl_sum, low, high, count] = sums;
        let loss = match cfg.loss_type {
            LossType::Grpo => grpo_loss,
            LossType::Dapo => loss_sum / count.max(1.0),
            LossType::DrGrpo => loss_sum / (batch * cfg.max_completion_len.max(1)) as f64,
        };
        let mean = |s: f64| if count > 0.0 { (s / count) as f32 } else { 0.0 };
        Ok(GrpoLossMetrics {
            loss: loss as f32,
            kl_mean: mean(kl_sum),
            clip_ratio_low: mean(low),
            clip_ratio_high: mean(high),
            clip_ratio_region: mean(low + high),
            tokens: count as f32,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn grpo_loss_backward_impl(
        &self,
        dlogp: &mut CudaSlice<f32>,
        logp: &CudaSlice<f32>,
        old_logp: &CudaSlice<f32>,
        ref_logp: &CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        advantages: &CudaSlice<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<()> {
        check_grpo_inputs(
            "grpo_loss_backward",
            logp.len(),
            old_logp.len(),
            ref_logp.len(),
            mask.len(),
            advantages.len(),
            batch,
            len,
            cfg,
        )?;
        need(dlogp, batch * len, "dlogp")?;
        if batch == 0 {
            return Ok(());
        }
        let params = grpo_params(cfg)?;
        let reference = if cfg.beta != 0.0 { ref_logp } else { logp };
        let (batch_i, len_i) = (dim_i32(batch, "batch")?, dim_i32(len, "len")?);
        let mut row_count = self.alloc_f64(batch)?;
        let cfg_rows = grid_rows(batch, 256)?;
        launch!(
            self,
            "grpo_mask_count",
            cfg_rows,
            &mut row_count,
            mask,
            &len_i
        )?;
        launch!(
            self,
            "grpo_loss_backward",
            cfg_rows,
            dlogp,
            logp,
            old_logp,
            reference,
            mask,
            advantages,
            &row_count,
            &batch_i,
            &len_i,
            &params
        )
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
        let u = self
            .stream
            .clone_htod(&uniforms[..batch])
            .context("cuda backend: upload uniforms")?;
        let mut scratch = self.zeros(batch * vocab)?;
        let mut tokens = self.alloc_u32(batch)?;
        let (vocab_i, top_k_i) = (
            dim_i32(vocab, "vocab")?,
            dim_i32(top_k.min(vocab), "top_k")?,
        );
        launch!(
            self,
            "sample_rows",
            grid_rows(batch, 1024)?,
            &mut tokens,
            &mut scratch,
            logits,
            &u,
            &vocab_i,
            &temperature,
            &top_p,
            &top_k_i
        )?;
        let host = self
            .stream
            .clone_dtoh(&tokens)
            .context("cuda backend: download tokens")?;
        self.synchronize()?;
        Ok(host[..batch].to_vec())
    }
}
