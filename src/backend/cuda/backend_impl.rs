//! `impl Backend for Cuda`: the small elementwise ops inline, the rest delegated: memory ops to
//! `memory.rs`, launchers to `dense.rs`, `attention.rs` / `attention_mma.rs` (chosen by
//! `Cuda::set_attention_kernel`), `decode.rs`, `head.rs` and `grpo_loss.rs`. A trait impl is one block, hence its ~630 lines.

use super::kernels;
use super::{
    dim_i32, grid_1d, grid_cols, grid_rows, need, need_ids, row_threads, AttentionKernel, Cuda,
    CudaBuf, BLOCK,
};
use crate::backend::{
    AdvantageStats, AttnShape, Backend, DecodeShape, GrpoLossConfig, GrpoLossMetrics, QkNormRope,
    RewardStd, Rope, ScaleRewards,
};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

/// Refuses buffers narrowed to bf16 (the `Backend::keep_as_*` hints): these ops size
/// themselves from the f32 values, which a narrowed buffer no longer has, so they would
/// silently do nothing.
pub(super) fn f32_values(bufs: &[&CudaBuf], op: &str) -> Result<()> {
    ensure!(
        bufs.iter().all(|b| !b.is_narrowed()),
        "{op}: a buffer was kept only in bf16 (a Backend::keep_as_* hint); it has no f32 values"
    );
    Ok(())
}

/// The bf16 values of a narrowed buffer.
pub(super) fn narrowed_copy<'b>(
    buf: &'b CudaBuf,
    op: &str,
    what: &str,
) -> Result<&'b CudaSlice<bf16>> {
    buf.bf16_cached()
        .ok_or_else(|| anyhow!("{op}: `{what}` was narrowed but lost its bf16 copy"))
}

impl Backend for Cuda {
    type Buf = CudaBuf;
    type Ids = CudaSlice<u32>;
    type Recording = super::CudaRecording;

    /// The device and its non-default settings.
    fn name(&self) -> String {
        let device = self.device_name().unwrap_or_else(|_| "unknown GPU".into());
        let mut parts = vec![device, self.gemm_precision.label().to_string()];
        // the GEMM precision is always named in the device line, so not twice
        let gemm = parts[1].clone();
        parts.extend(self.settings().into_iter().filter(|s| *s != gemm));
        format!("cuda ({})", parts.join(", "))
    }
    fn settings(&self) -> Vec<String> {
        self.non_default_settings()
    }
    fn dense_peak_tflops(&self) -> Option<f64> {
        crate::backend::dense_bf16_peak_tflops(&self.device_name().ok()?)
    }
    fn peak_memory_bytes(&self) -> Option<u64> {
        self.pool_high_water_bytes().ok()
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        self.upload_impl(data)
    }
    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.download_impl(buf)
    }
    fn zeros(&self, len: usize) -> Result<CudaBuf> {
        self.zeros_impl(len)
    }
    fn upload_ids(&self, ids: &[u32]) -> Result<CudaSlice<u32>> {
        self.upload_ids_impl(ids)
    }
    fn write_ids(&self, dst: &mut CudaSlice<u32>, ids: &[u32]) -> Result<()> {
        self.write_ids_impl(dst, ids)
    }
    fn record(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<super::CudaRecording>> {
        self.record_impl(work)
    }
    fn replay(&self, recording: &super::CudaRecording) -> Result<()> {
        self.replay_impl(recording)
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.logical_len()
    }
    fn keep_as_gemm_input(&self, buf: &mut CudaBuf) -> Result<()> {
        self.narrow_to_bf16(buf)
    }
    fn keep_as_attention_input(&self, buf: &mut CudaBuf) -> Result<()> {
        self.narrow_attention_input(buf)
    }
    fn keep_as_attention_output(&self, buf: &mut CudaBuf) -> Result<()> {
        // as a GEMM input: narrowed in bf16 mode, where δ then reads the bf16 copy
        self.narrow_to_bf16(buf)
    }
    fn keep_as_gemm_weight(&self, buf: &mut CudaBuf) -> Result<()> {
        // read only through the bf16 copy in Bf16 mode, like a narrowed GEMM input
        self.narrow_to_bf16(buf)
    }
    fn keep_as_kv_cache(&self, buf: &mut CudaBuf) -> Result<()> {
        self.keep_as_kv_cache_impl(buf)
    }
    fn stacks_decode_projections(&self) -> bool {
        // at a decode step's few rows each GEMM is launch/latency-bound: 4 GEMMs a layer, not 7
        true
    }
    fn keep_as_swiglu_input(&self, buf: &mut CudaBuf) -> Result<()> {
        // the bf16 mode's rule for GEMM inputs: narrowed there, kept f32 in the other modes
        self.narrow_to_bf16(buf)
    }
    fn copy(
        &self,
        dst: &mut CudaBuf,
        dst_off: usize,
        src: &CudaBuf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        self.copy_impl(dst, dst_off, src, src_off, len)
    }
    fn fill(&self, buf: &mut CudaBuf, value: f32) -> Result<()> {
        f32_values(&[buf], "fill")?;
        let n = buf.len() as i64;
        if n == 0 {
            return Ok(());
        }
        kernels::fill_f32(self, grid_1d(n as usize), buf, &value, &n)
    }

    fn add_assign(&self, y: &mut CudaBuf, x: &CudaBuf) -> Result<()> {
        f32_values(&[y, x], "add_assign")?;
        ensure!(
            y.len() == x.len(),
            "add_assign: lengths {} and {}",
            y.len(),
            x.len()
        );
        let n = y.len() as i64;
        if n == 0 {
            return Ok(());
        }
        kernels::add_assign_f32(self, grid_1d(n as usize), y, x, &n)
    }
    fn scale(&self, y: &mut CudaBuf, s: f32) -> Result<()> {
        f32_values(&[y], "scale")?;
        let n = y.len() as i64;
        if n == 0 {
            return Ok(());
        }
        kernels::scale_f32(self, grid_1d(n as usize), y, &s, &n)
    }
    fn sum_squares(&self, y: &CudaBuf) -> Result<f64> {
        f32_values(&[y], "sum_squares")?;
        let n = y.len() as i64;
        if n == 0 {
            return Ok(0.0);
        }
        let cfg = LaunchConfig {
            grid_dim: ((n as usize).div_ceil(BLOCK as usize).min(1024) as u32, 1, 1),
            ..grid_1d(n as usize)
        };
        let mut partials = self.zeros(cfg.grid_dim.0 as usize)?;
        kernels::sum_squares_partial(self, cfg, y, &n, &mut partials)?;
        Ok(self.download(&partials)?.iter().map(|&p| p as f64).sum())
    }
    fn all_finite(&self, y: &CudaBuf) -> Result<bool> {
        self.not_capturing("all_finite")?; // it reads results back to the host
        f32_values(&[y], "all_finite")?;
        let n = y.len() as i64;
        if n == 0 {
            return Ok(true);
        }
        let mut flag = self.alloc_u32(1)?;
        kernels::any_nonfinite(self, grid_1d(n as usize), y, &n, &mut flag)?;
        let host = self
            .stream
            .clone_dtoh(&flag)
            .context("cuda backend: download")?;
        self.synchronize()?;
        Ok(host[0] == 0)
    }

    fn embedding_forward(
        &self,
        out: &mut CudaBuf,
        table: &CudaBuf,
        ids: &CudaSlice<u32>,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        need(out, n * dim, "out")?;
        need_ids(ids, n, "ids")?;
        if n == 0 || dim == 0 {
            return Ok(());
        }
        let d = dim_i32(dim, "dim")?;
        let cfg = grid_rows(n, row_threads(dim).min(256))?;
        let vocab = (table.len() / dim) as i64;
        kernels::embedding_forward(self, cfg, out, table, ids, &d, &vocab)
    }
    fn embedding_backward(
        &self,
        dtable: &mut CudaBuf,
        dout: &CudaBuf,
        ids: &CudaSlice<u32>,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        need(dout, n * dim, "dout")?;
        need_ids(ids, n, "ids")?;
        if n == 0 || dim == 0 {
            return Ok(());
        }
        let d = dim_i32(dim, "dim")?;
        let cfg = grid_rows(n, row_threads(dim).min(256))?;
        let vocab = (dtable.len() / dim) as i64;
        kernels::embedding_backward(self, cfg, dtable, dout, ids, &d, &vocab)
    }

    fn linear_forward(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        bias: Option<&CudaBuf>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()> {
        self.linear_forward_impl(out, x, w, bias, n, k, m)
    }
    fn linear_backward(
        &self,
        dx: Option<&mut CudaBuf>,
        dw: &mut CudaBuf,
        dbias: Option<&mut CudaBuf>,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()> {
        self.linear_backward_impl(dx, dw, dbias, dout, x, w, n, k, m)
    }
    fn rmsnorm_forward(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_rows(out, rstd, x, w, n, dim, eps, true)
    }
    fn head_rmsnorm_forward(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        // no GEMM reads q or k: no bf16 copy, which RoPE's in-place write would drop at once
        // (and which a recorded decode step could not allocate)
        self.rmsnorm_rows(out, rstd, x, w, n, dim, eps, false)
    }
    fn add_rmsnorm_forward(
        &self,
        x: &mut CudaBuf,
        delta: &CudaBuf,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        w: &CudaBuf,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        f32_values(&[x, delta], "add_rmsnorm_forward")?;
        need(x, n * dim, "x")?;
        need(delta, n * dim, "delta")?;
        need(out, n * dim, "out")?;
        need(rstd, n, "rstd")?;
        need(w, dim, "w")?;
        if n == 0 {
            return Ok(());
        }
        let d = dim_i32(dim, "dim")?;
        let cfg = grid_rows(n, row_threads(dim))?;
        self.write_with_bf16_copy(out, n * dim, |out, copy| match copy {
            None => kernels::add_rmsnorm_forward(self, cfg, x, out, rstd, delta, w, &d, &eps),
            Some(c) => kernels::add_rmsnorm_forward_with_bf16(
                self, cfg, x, out, c, rstd, delta, w, &d, &eps,
            ),
        })
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut CudaBuf,
        dw: &mut CudaBuf,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        rstd: &CudaBuf,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        need(dx, n * dim, "dx")?;
        need(dout, n * dim, "dout")?;
        need(x, n * dim, "x")?;
        need(rstd, n, "rstd")?;
        need(w, dim, "w")?;
        need(dw, dim, "dw")?;
        if n == 0 {
            return Ok(());
        }
        let d = dim_i32(dim, "dim")?;
        let cfg = grid_rows(n, row_threads(dim))?;
        kernels::rmsnorm_backward_input(self, cfg, dx, dout, x, w, rstd, &d)?;
        let (cfg, per_slice) = grid_cols(dim, n);
        let rows = n as i64;
        kernels::rmsnorm_backward_weight(self, cfg, dw, dout, x, rstd, &rows, &d, &per_slice)
    }

    fn rope_forward(
        &self,
        x: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        self.rope(x, positions, rope, n, n_heads, head_dim, 1.0)
    }
    fn rope_backward(
        &self,
        dx: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        self.rope(dx, positions, rope, n, n_heads, head_dim, -1.0)
    }

    fn qk_norm_rope_forward(
        &self,
        q: &mut CudaBuf,
        k: &mut CudaBuf,
        rstd_q: &mut CudaBuf,
        rstd_k: &mut CudaBuf,
        a: &QkNormRope<CudaBuf, CudaSlice<u32>>,
        eps: f32,
    ) -> Result<()> {
        f32_values(
            &[a.q_raw, a.k_raw, a.q_norm, a.k_norm],
            "qk_norm_rope_forward",
        )?;
        self.qk_norm_rope_forward_impl(q, k, rstd_q, rstd_k, a, eps)
    }
    fn qk_norm_rope_backward(
        &self,
        dq_raw: &mut CudaBuf,
        dk_raw: &mut CudaBuf,
        dq_norm: &mut CudaBuf,
        dk_norm: &mut CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        rstd_q: &CudaBuf,
        rstd_k: &CudaBuf,
        a: &QkNormRope<CudaBuf, CudaSlice<u32>>,
    ) -> Result<()> {
        f32_values(
            &[dq, dk, a.q_raw, a.k_raw, a.q_norm, a.k_norm, rstd_q, rstd_k],
            "qk_norm_rope_backward",
        )?;
        self.qk_norm_rope_backward_impl(dq_raw, dk_raw, dq_norm, dk_norm, dq, dk, rstd_q, rstd_k, a)
    }

    fn attention_forward(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        s: AttnShape,
    ) -> Result<()> {
        match self.attention {
            AttentionKernel::Simt => {
                f32_values(&[q, k, v], "attention_forward (simt)")?;
                self.attention_forward_impl(out, lse, q, k, v, s)
            }
            // one entry for both tensor-core forwards (the checks and bf16 copies are the same)
            AttentionKernel::Mma | AttentionKernel::Wgmma => {
                self.attention_mma_forward_impl(out, lse, q, k, v, s)
            }
        }
    }
    fn attention_backward(
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
        match self.attention {
            AttentionKernel::Simt => {
                f32_values(&[dout, q, k, v], "attention_backward (simt)")?;
                self.attention_backward_impl(dq, dk, dv, dout, q, k, v, out, lse, s)
            }
            // one entry for both tensor-core backwards (δ and the bf16 copies are the same)
            AttentionKernel::Mma | AttentionKernel::Wgmma => {
                self.attention_mma_backward_impl(dq, dk, dv, dout, q, k, v, out, lse, s)
            }
        }
    }

    fn kv_cache_write(
        &self,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        positions: &CudaSlice<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        self.kv_cache_write_impl(k_cache, v_cache, k, v, positions, s)
    }
    fn decode_rope_cache_write(
        &self,
        q: &mut CudaBuf,
        k: &mut CudaBuf,
        v: &CudaBuf,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        s: DecodeShape,
    ) -> Result<()> {
        self.decode_rope_cache_write_impl(q, k, v, k_cache, v_cache, positions, rope, s)
    }
    fn decode_rope_cache_write_stacked(
        &self,
        q: &mut CudaBuf,
        qkv: &CudaBuf,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        s: DecodeShape,
    ) -> Result<()> {
        f32_values(&[q, qkv], "decode_rope_cache_write_stacked")?;
        self.decode_rope_cache_write_stacked_impl(q, qkv, k_cache, v_cache, positions, rope, s)
    }
    fn decode_qk_norm_rope_cache_write_stacked(
        &self,
        q: &mut CudaBuf,
        qkv: &CudaBuf,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        positions: &CudaSlice<u32>,
        rope: &Rope<CudaBuf>,
        q_norm: &CudaBuf,
        k_norm: &CudaBuf,
        eps: f32,
        s: DecodeShape,
    ) -> Result<()> {
        let op = "decode_qk_norm_rope_cache_write_stacked";
        f32_values(&[q, qkv, q_norm, k_norm], op)?;
        self.decode_qk_norm_rope_cache_write_stacked_impl(
            q, qkv, k_cache, v_cache, positions, rope, q_norm, k_norm, eps, s,
        )
    }
    fn decode_attention(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        positions: &CudaSlice<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        self.decode_attention_impl(out, q, k_cache, v_cache, positions, s)
    }

    fn swiglu_forward(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf) -> Result<()> {
        self.swiglu_forward_impl(out, gate, up)
    }
    fn swiglu_forward_stacked(
        &self,
        out: &mut CudaBuf,
        gate_up: &CudaBuf,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        self.swiglu_forward_stacked_impl(out, gate_up, rows, f)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
    ) -> Result<()> {
        self.swiglu_backward_impl(dgate, dup, dout, gate, up)
    }

    fn fused_logprob_forward(
        &self,
        logp: &mut CudaBuf,
        entropy: &mut CudaBuf,
        lse: &mut CudaBuf,
        hidden: &CudaBuf,
        w: &CudaBuf,
        targets: &CudaSlice<u32>,
        n: usize,
        dim: usize,
        vocab: usize,
        temperature: f32,
    ) -> Result<()> {
        self.fused_logprob_forward_impl(
            logp,
            entropy,
            lse,
            hidden,
            w,
            targets,
            (n, dim, vocab),
            temperature,
        )
    }
    fn fused_logprob_backward(
        &self,
        dhidden: &mut CudaBuf,
        dw: &mut CudaBuf,
        dlogp: &CudaBuf,
        hidden: &CudaBuf,
        w: &CudaBuf,
        targets: &CudaSlice<u32>,
        lse: &CudaBuf,
        n: usize,
        dim: usize,
        vocab: usize,
        temperature: f32,
    ) -> Result<()> {
        self.fused_logprob_backward_impl(
            dhidden,
            dw,
            dlogp,
            hidden,
            w,
            targets,
            lse,
            (n, dim, vocab),
            temperature,
        )
    }

    fn grpo_loss_forward(
        &self,
        logp: &CudaBuf,
        old_logp: &CudaBuf,
        ref_logp: &CudaBuf,
        mask: &CudaBuf,
        advantages: &CudaBuf,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<GrpoLossMetrics> {
        self.grpo_loss_forward_impl(logp, old_logp, ref_logp, mask, advantages, batch, len, cfg)
    }
    fn grpo_loss_backward(
        &self,
        dlogp: &mut CudaBuf,
        logp: &CudaBuf,
        old_logp: &CudaBuf,
        ref_logp: &CudaBuf,
        mask: &CudaBuf,
        advantages: &CudaBuf,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<()> {
        self.grpo_loss_backward_impl(
            dlogp, logp, old_logp, ref_logp, mask, advantages, batch, len, cfg,
        )
    }

    fn grpo_loss_fused(
        &self,
        dlogp: &mut CudaBuf,
        logp: &CudaBuf,
        old_logp: &CudaBuf,
        ref_logp: &CudaBuf,
        mask: &CudaBuf,
        advantages: &CudaBuf,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
        grad_scale: f32,
    ) -> Result<GrpoLossMetrics> {
        self.grpo_loss_fused_impl(
            dlogp, logp, old_logp, ref_logp, mask, advantages, batch, len, cfg, grad_scale,
        )
    }
    fn grpo_advantages(
        &self,
        advantages: &mut CudaBuf,
        rewards: &CudaBuf,
        group_size: usize,
        scale: ScaleRewards,
        std: RewardStd,
        eps: f32,
    ) -> Result<AdvantageStats> {
        self.grpo_advantages_impl(advantages, rewards, group_size, scale, std, eps)
    }

    fn adamw_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: u64,
    ) -> Result<()> {
        f32_values(&[param, grad, m, v], "adamw_step")?;
        ensure!(
            param.len() == grad.len() && m.len() == param.len() && v.len() == param.len(),
            "adamw_step: length mismatch"
        );
        ensure!(step >= 1, "adamw_step: step counts from 1");
        let n = param.len() as i64;
        if n == 0 {
            return Ok(());
        }
        // Same f32 bias corrections as the CPU reference.
        let exp = i32::try_from(step).unwrap_or(i32::MAX);
        let (bc1, bc2) = (1.0 - beta1.powi(exp), 1.0 - beta2.powi(exp));
        kernels::adamw_step(
            self,
            grid_1d(n as usize),
            param,
            grad,
            m,
            v,
            &lr,
            &beta1,
            &beta2,
            &eps,
            &weight_decay,
            &bc1,
            &bc2,
            &n,
        )
    }

    fn sample(
        &self,
        logits: &CudaBuf,
        uniforms: &[f32],
        batch: usize,
        vocab: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
    ) -> Result<Vec<u32>> {
        self.sample_impl(logits, uniforms, batch, vocab, temperature, top_p, top_k)
    }
}
