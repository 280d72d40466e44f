//! The seam between the model code and the compute devices.
//!
//! Every op has one name, used everywhere: the trait method here, the CPU reference in
//! `backend/cpu/<op>.rs`, the CUDA kernel in `kernels/<op>.cu` and its launcher in
//! `backend/cuda/<op>.rs`, the test in `tests/ops_<op>.rs` and the bench.
//!
//! Conventions (all backends):
//! - `Buf` holds f32 values on the device (the CUDA backend may keep bf16 shadows inside).
//! - Matrices are row-major. A linear layer's weight is `[out, in]` (Hugging Face layout):
//!   `y[n, out] = x[n, in] · W[out, in]ᵀ + b[out]`.
//! - Activations of a batch are `[B·T, D]`: B sequences of T positions each, right-padded,
//!   so causal attention never lets a real token see padding.
//! - Backward methods *write* d(input) and *accumulate* (+=) d(weight), so gradients of a
//!   weight shared by several uses (tied embeddings) add up without extra buffers.
//! - Anything that can fail (allocation, a launch) returns `anyhow::Result`.

mod composite;
pub mod cpu;
pub mod device;
mod peaks;
mod types;

pub use peaks::dense_bf16_peak_tflops;
pub use types::{
    AdvantageStats, AttnShape, DecodeShape, GrpoLossConfig, GrpoLossMetrics, ImportanceSampling,
    LossType, QkNormRope, RewardStd, Rope, ScaleRewards,
};
#[cfg(feature = "cuda")]
pub mod cuda;

use anyhow::{ensure, Result};

/// One compute device. The model code (`model/llama.rs`) is written once against this.
pub trait Backend: Send + Sync {
    /// f32 storage on the device.
    type Buf: Send + Sync;
    /// u32 storage on the device (token ids, positions, lengths).
    type Ids: Send + Sync;
    /// Device work recorded once by [`Backend::record`] and replayed by [`Backend::replay`]
    /// (a CUDA graph). The CPU has none (`Infallible`).
    type Recording;

    fn name(&self) -> String;

    /// The settings that change the numbers or the speed and are not the defaults (the CUDA
    /// backend's `CADA_*` choices: GEMM precision, attention kernels, KV cache, graphs), so a
    /// benchmark record says what it timed. Empty for the defaults and on the CPU.
    fn settings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Spec-sheet dense bf16 tensor peak in TFLOP/s (for MFU), when the device is known.
    fn dense_peak_tflops(&self) -> Option<f64> {
        None
    }

    /// High-water mark of device memory allocated by this backend since it was created, when
    /// the device tracks one (the CUDA memory pool does; the CPU reports `None`).
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }

    // ---- memory -------------------------------------------------------------------
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    fn upload_ids(&self, ids: &[u32]) -> Result<Self::Ids>;
    /// Overwrites `dst` (same length) with `ids` in place: the buffer keeps its address, which
    /// a [`Backend::Recording`] that reads it depends on.
    fn write_ids(&self, dst: &mut Self::Ids, ids: &[u32]) -> Result<()>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// [`Backend::copy`] into a KV cache (the prefill's keys and values): stored as the cache
    /// stores its values (rounded to bf16 on a bf16 cache). The default is `copy`.
    fn copy_into_kv_cache(
        &self,
        cache: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        self.copy(cache, dst_off, src, src_off, len)
    }
    /// `dst[dst_off..dst_off+len] = src[src_off..src_off+len]`
    fn copy(
        &self,
        dst: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    ) -> Result<()>;
    fn fill(&self, buf: &mut Self::Buf, value: f32) -> Result<()>;

    /// A hint for an activation: from now on `buf` is read only as the `x` operand of
    /// [`Backend::linear_forward`] and [`Backend::linear_backward`]. A backend may then keep it
    /// in a narrower format (CUDA in bf16 GEMM mode converts it once and keeps only the bf16 copy
    /// its GEMMs read, freeing the f32 values: half the memory, one conversion instead of one
    /// per GEMM); any other use of `buf` afterwards is an error there. The default does nothing.
    fn keep_as_gemm_input(&self, _buf: &mut Self::Buf) -> Result<()> {
        Ok(())
    }

    /// The same hint for a q, k or v activation: from now on `buf` is read only by
    /// [`Backend::attention_forward`] and [`Backend::attention_backward`]. CUDA with the
    /// tensor-core attention (which reads bf16 copies of q, k and v) keeps only the bf16 copy;
    /// any other use of `buf` afterwards is an error there. The default does nothing.
    fn keep_as_attention_input(&self, _buf: &mut Self::Buf) -> Result<()> {
        Ok(())
    }

    /// The same hint for SwiGLU's gate or up activation: from now on `buf` is read only by
    /// [`Backend::swiglu_backward`]. CUDA in bf16 GEMM mode keeps only a bf16 copy (the gate and
    /// up projections' outputs, the largest saved activations of a layer); the backward's f32
    /// math then starts from bf16-rounded values. The default does nothing.
    fn keep_as_swiglu_input(&self, _buf: &mut Self::Buf) -> Result<()> {
        Ok(())
    }

    /// The same hint for the attention output: from now on `buf` is read only as the `x`
    /// operand of the output projection ([`Backend::linear_forward`] and
    /// [`Backend::linear_backward`]) and as `out` of [`Backend::attention_backward`] (its
    /// δ = rowsum(dO∘O)). CUDA in bf16 GEMM mode keeps only a bf16 copy, and δ is then summed
    /// from bf16 values. The default does nothing.
    fn keep_as_attention_output(&self, _buf: &mut Self::Buf) -> Result<()> {
        Ok(())
    }
    /// The same hint for a weight made for inference only (the decoder's stacked q/k/v and
    /// gate/up weights): from now on `buf` is read only as the `w` operand of
    /// [`Backend::linear_forward`]. CUDA in bf16 GEMM mode (with narrowing on, the default)
    /// keeps only the bf16 copy its GEMMs read. The default does nothing.
    fn keep_as_gemm_weight(&self, _buf: &mut Self::Buf) -> Result<()> {
        Ok(())
    }
    /// The same hint for a decode KV cache (made zeroed, then written by
    /// [`Backend::copy`] from the prefill, [`Backend::kv_cache_write`] and the
    /// `decode_rope_cache_write` ops, read by [`Backend::decode_attention`]). CUDA with
    /// `CADA_KV_CACHE=bf16` keeps it in bf16. The default does nothing.
    fn keep_as_kv_cache(&self, _buf: &mut Self::Buf) -> Result<()> {
        Ok(())
    }
    /// Whether a [`crate::model::llama::Decoder`] should stack its q/k/v and gate/up weights into
    /// one GEMM each ([`Backend::decode_rope_cache_write_stacked`],
    /// [`Backend::swiglu_forward_stacked`] read the outputs). Worth it where a decode step's
    /// small GEMMs cost their launch and latency whatever their width and the backend has the
    /// fused readers; the copies cost memory. The default: no.
    fn stacks_decode_projections(&self) -> bool {
        false
    }

    // ---- elementwise / reductions -------------------------------------------------
    /// `y += x`
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf) -> Result<()>;
    /// `y *= s`
    fn scale(&self, y: &mut Self::Buf, s: f32) -> Result<()>;
    /// Σ y², accumulated in f64 on the CPU (f32 with pairwise reduction on a GPU)
    fn sum_squares(&self, y: &Self::Buf) -> Result<f64>;
    /// true when every element is finite
    fn all_finite(&self, y: &Self::Buf) -> Result<bool>;

    // ---- embedding ----------------------------------------------------------------
    /// `out[n, :] = table[ids[n], :]`, table `[vocab, dim]`
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        ids: &Self::Ids,
        n: usize,
        dim: usize,
    ) -> Result<()>;
    /// `dtable[ids[n], :] += dout[n, :]`
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        ids: &Self::Ids,
        n: usize,
        dim: usize,
    ) -> Result<()>;

    // ---- linear -------------------------------------------------------------------
    /// `out[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m])`
    fn linear_forward(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()>;
    /// writes `dx[n, k] = dout · w`; accumulates `dw[m, k] += doutᵀ · x` and `dbias[m] += Σₙ dout`.
    /// `dx = None` skips the input gradient (first layer).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        dbias: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()>;

    // ---- RMSNorm (f32 statistics, as Hugging Face) ---------------------------------
    /// `out = x / sqrt(mean(x²) + eps) * w`; writes `rstd[n] = 1/sqrt(mean(x²)+eps)` for the backward
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// Qwen3's per-head RMSNorm of q or k: [`Backend::rmsnorm_forward`] over `n` head rows of
    /// `dim`. Its output is read by RoPE and the attention, never by a GEMM, so a backend that
    /// keeps GEMM copies of norm outputs (CUDA's bf16 mode) makes none here.
    #[allow(clippy::too_many_arguments)]
    fn head_rmsnorm_forward(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_forward(out, rstd, x, w, n, dim, eps)
    }
    /// The decode step's residual add and the RMSNorm after it, in one: `x += delta`, then
    /// `out, rstd` = [`Backend::rmsnorm_forward`] of the new `x`. The default is those two ops
    /// (the reference the fused kernels are tested against).
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm_forward(
        &self,
        x: &mut Self::Buf,
        delta: &Self::Buf,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        w: &Self::Buf,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.add_assign(x, delta)?;
        self.rmsnorm_forward(out, rstd, x, w, n, dim, eps)
    }
    /// writes `dx`, accumulates `dw`
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        n: usize,
        dim: usize,
    ) -> Result<()>;

    // ---- RoPE (Hugging Face rotate-half layout) ------------------------------------
    /// In place on `x[n, n_heads · head_dim]`; row `i` is at position `positions[i]`.
    /// `rope` says which dims rotate, how fast and how scaled ([`Rope`]).
    #[allow(clippy::too_many_arguments)]
    fn rope_forward(
        &self,
        x: &mut Self::Buf,
        positions: &Self::Ids,
        rope: &Rope<Self::Buf>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()>;
    /// In place: the inverse rotation applied to the incoming gradient.
    fn rope_backward(
        &self,
        dx: &mut Self::Buf,
        positions: &Self::Ids,
        rope: &Rope<Self::Buf>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()>;

    /// Qwen3's q/k path: `q = RoPE(head RMSNorm(q_raw))` per head row with `q_norm`, the same
    /// for k; `rstd_q [tokens · n_heads]`, `rstd_k [tokens · n_kv_heads]` keep 1/rms for the
    /// backward. The default is [`Backend::head_rmsnorm_forward`] and [`Backend::rope_forward`]
    /// on each (the reference CUDA's one-launch kernel is tested against).
    fn qk_norm_rope_forward(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        rstd_q: &mut Self::Buf,
        rstd_k: &mut Self::Buf,
        a: &QkNormRope<Self::Buf, Self::Ids>,
        eps: f32,
    ) -> Result<()> {
        composite::qk_norm_rope_forward(self, q, k, rstd_q, rstd_k, a, eps)
    }
    /// Its backward. `dq`, `dk` (gradients of the rotated q, k) are used up: turned back in
    /// place. Writes `dq_raw`, `dk_raw`; accumulates the norms' weight gradients into `dq_norm`,
    /// `dk_norm`. The default is [`Backend::rope_backward`] and [`Backend::rmsnorm_backward`].
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope_backward(
        &self,
        dq_raw: &mut Self::Buf,
        dk_raw: &mut Self::Buf,
        dq_norm: &mut Self::Buf,
        dk_norm: &mut Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        rstd_q: &Self::Buf,
        rstd_k: &Self::Buf,
        a: &QkNormRope<Self::Buf, Self::Ids>,
    ) -> Result<()> {
        composite::qk_norm_rope_backward(
            self, dq_raw, dk_raw, dq_norm, dk_norm, dq, dk, rstd_q, rstd_k, a,
        )
    }

    // ---- causal GQA attention ------------------------------------------------------
    /// `q [B·T, Hq·hd]`, `k, v [B·T, Hkv·hd]` → `out [B·T, Hq·hd]`, `lse [B, Hq, T]` (natural log).
    /// Scale 1/sqrt(hd).
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        s: AttnShape,
    ) -> Result<()>;
    /// writes `dq, dk, dv`, recomputing probabilities from `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        s: AttnShape,
    ) -> Result<()>;

    // ---- KV cache decode -----------------------------------------------------------
    /// Writes `k, v [batch, Hkv·hd]` into slot `b` at position `positions[b]` of the caches.
    fn kv_cache_write(
        &self,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        positions: &Self::Ids,
        s: DecodeShape,
    ) -> Result<()>;
    /// The decode step's RoPE and cache write, in one: `q [batch, Hq·hd]` and `k [batch,
    /// Hkv·hd]` rotated in place at `positions` (two [`Backend::rope_forward`]), then the rotated
    /// `k` and `v` written into the caches (as [`Backend::kv_cache_write`]). The default is
    /// those three ops (the reference the fused kernel is tested against).
    #[allow(clippy::too_many_arguments)]
    fn decode_rope_cache_write(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        positions: &Self::Ids,
        rope: &Rope<Self::Buf>,
        s: DecodeShape,
    ) -> Result<()> {
        self.rope_forward(q, positions, rope, s.batch, s.n_heads, s.head_dim)?;
        self.rope_forward(k, positions, rope, s.batch, s.n_kv_heads, s.head_dim)?;
        self.kv_cache_write(k_cache, v_cache, k, v, positions, s)
    }
    /// [`Backend::decode_rope_cache_write`] from the stacked q/k/v projection's output
    /// `qkv [batch, Hq·hd + 2·Hkv·hd]` (each row q | k | v, left unchanged): the rotated q is
    /// written to `q [batch, Hq·hd]`, the rotated k and v into the caches. The default splits the
    /// rows and runs that op (the reference the fused kernel is tested against).
    #[allow(clippy::too_many_arguments)]
    fn decode_rope_cache_write_stacked(
        &self,
        q: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        positions: &Self::Ids,
        rope: &Rope<Self::Buf>,
        s: DecodeShape,
    ) -> Result<()> {
        composite::decode_rope_cache_write_stacked(
            self, q, qkv, k_cache, v_cache, positions, rope, s,
        )
    }
    /// Qwen3's [`Backend::decode_rope_cache_write_stacked`]: each head of q and of k in `qkv`
    /// RMSNorm-ed over `head_dim` with `q_norm` / `k_norm` `[head_dim]` (as
    /// [`Backend::head_rmsnorm_forward`], whose 1/rms is not kept: nothing runs backward from a
    /// decode step) before RoPE and the cache write. The default splits the rows and runs those
    /// ops (the reference the fused kernel is tested against).
    #[allow(clippy::too_many_arguments)]
    fn decode_qk_norm_rope_cache_write_stacked(
        &self,
        q: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        positions: &Self::Ids,
        rope: &Rope<Self::Buf>,
        q_norm: &Self::Buf,
        k_norm: &Self::Buf,
        eps: f32,
        s: DecodeShape,
    ) -> Result<()> {
        composite::decode_qk_norm_rope_cache_write_stacked(
            self, q, qkv, k_cache, v_cache, positions, rope, q_norm, k_norm, eps, s,
        )
    }
    /// One query per sequence: `q [batch, Hq·hd]` attends to positions `0..=positions[b]`
    /// of slot `b`. Writes `out [batch, Hq·hd]`.
    #[allow(clippy::too_many_arguments)]
    fn decode_attention(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        positions: &Self::Ids,
        s: DecodeShape,
    ) -> Result<()>;

    // ---- SwiGLU --------------------------------------------------------------------
    /// `out = silu(gate) * up`, all `[n]` flattened
    fn swiglu_forward(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()>;
    /// [`Backend::swiglu_forward`] from the stacked gate/up projection's output
    /// `gate_up [rows, 2·f]` (each row gate | up) into `out [rows, f]`. The default splits the
    /// rows and runs that op (the reference the fused kernel is tested against).
    fn swiglu_forward_stacked(
        &self,
        out: &mut Self::Buf,
        gate_up: &Self::Buf,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        composite::swiglu_forward_stacked(self, out, gate_up, rows, f)
    }
    /// writes `dgate, dup`
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()>;

    // ---- fused log-prob head -------------------------------------------------------
    /// For each row n: `z = hidden[n] · wᵀ / temperature` over the vocabulary, streamed in
    /// chunks (never a `[n × vocab]` buffer); writes `logp[n] = z[target[n]] − logsumexp(z)`,
    /// `entropy[n] = −Σ softmax(z)·log softmax(z)`, and `lse[n]` for the backward.
    #[allow(clippy::too_many_arguments)]
    fn fused_logprob_forward(
        &self,
        logp: &mut Self::Buf,
        entropy: &mut Self::Buf,
        lse: &mut Self::Buf,
        hidden: &Self::Buf,
        w: &Self::Buf,
        targets: &Self::Ids,
        n: usize,
        dim: usize,
        vocab: usize,
        temperature: f32,
    ) -> Result<()>;
    /// Given `dlogp[n]`: writes `dhidden [n, dim]`, accumulates `dw [vocab, dim]`.
    /// The entropy is a metric and carries no gradient.
    #[allow(clippy::too_many_arguments)]
    fn fused_logprob_backward(
        &self,
        dhidden: &mut Self::Buf,
        dw: &mut Self::Buf,
        dlogp: &Self::Buf,
        hidden: &Self::Buf,
        w: &Self::Buf,
        targets: &Self::Ids,
        lse: &Self::Buf,
        n: usize,
        dim: usize,
        vocab: usize,
        temperature: f32,
    ) -> Result<()>;

    // ---- GRPO loss -----------------------------------------------------------------
    /// Per-token inputs `[batch, len]` (right-padded): current, old and reference log-probs
    /// and the completion mask (1 = counted); `advantages [batch]`. Returns loss + metrics.
    #[allow(clippy::too_many_arguments)]
    fn grpo_loss_forward(
        &self,
        logp: &Self::Buf,
        old_logp: &Self::Buf,
        ref_logp: &Self::Buf,
        mask: &Self::Buf,
        advantages: &Self::Buf,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<GrpoLossMetrics>;
    /// writes `dlogp [batch, len]` = d(loss)/d(logp)
    #[allow(clippy::too_many_arguments)]
    fn grpo_loss_backward(
        &self,
        dlogp: &mut Self::Buf,
        logp: &Self::Buf,
        old_logp: &Self::Buf,
        ref_logp: &Self::Buf,
        mask: &Self::Buf,
        advantages: &Self::Buf,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<()>;

    /// The forward and the backward in one pass over the token grids: writes
    /// `dlogp = grad_scale · d(loss)/d(logp)` (the trainer's micro-batch weight rides along in
    /// `grad_scale`) and returns the same metrics as [`Backend::grpo_loss_forward`], reduced on
    /// the device. Its composite twin is `grpo_loss_forward` then `grpo_loss_backward`.
    #[allow(clippy::too_many_arguments)]
    fn grpo_loss_fused(
        &self,
        dlogp: &mut Self::Buf,
        logp: &Self::Buf,
        old_logp: &Self::Buf,
        ref_logp: &Self::Buf,
        mask: &Self::Buf,
        advantages: &Self::Buf,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
        grad_scale: f32,
    ) -> Result<GrpoLossMetrics>;

    /// Group-relative advantages of `rewards [groups · group_size]` (the G completions of a
    /// prompt adjacent) into `advantages` (same length), with the batch statistics. Errors as
    /// `train::advantages::group_advantages` does (a non-finite reward names its index).
    fn grpo_advantages(
        &self,
        advantages: &mut Self::Buf,
        rewards: &Self::Buf,
        group_size: usize,
        scale: ScaleRewards,
        std: RewardStd,
        eps: f32,
    ) -> Result<AdvantageStats>;

    // ---- optimiser -----------------------------------------------------------------
    /// One AdamW update with bias correction (`step` counts from 1), decoupled weight decay.
    #[allow(clippy::too_many_arguments)]
    fn adamw_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: u64,
    ) -> Result<()>;

    // ---- recording ------------------------------------------------------------------
    /// Runs `work` (a fixed sequence of ops) and, where the backend can, also records it for
    /// [`Backend::replay`]. A recording holds the address of every buffer `work` touched and
    /// every scalar it passed, so a replay repeats exactly that work on whatever those buffers
    /// hold then: the caller keeps all of them alive and in place (inputs rewritten with
    /// [`Backend::write_ids`] / [`Backend::copy`]), and drops the recording before any of them
    /// is freed or a weight changes. Run `work` once unrecorded first, so that caches it fills
    /// on first use (bf16 weight copies, scratch) already exist. `None`: nothing was recorded
    /// (the CPU; CUDA with `CADA_CUDA_GRAPHS=0`, or when the driver refused the capture, which
    /// it reports once on stderr); the work has run either way.
    fn record(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>>;
    /// Repeats a recorded `work` (see [`Backend::record`]).
    fn replay(&self, recording: &Self::Recording) -> Result<()>;

    // ---- sampling ------------------------------------------------------------------
    /// `logits [batch, vocab]` → one token per row. `uniforms[b]` in [0,1) is the row's random
    /// draw (drawn on the host from the seeded RNG, so every backend samples the same token).
    /// temperature 0 = greedy (argmax, lowest index on ties).
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        logits: &Self::Buf,
        uniforms: &[f32],
        batch: usize,
        vocab: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
    ) -> Result<Vec<u32>>;
}

/// The lengths [`Backend::swiglu_forward_stacked`] takes: exactly `rows · 2f` values in and
/// `rows · f` out (every backend: a longer `out` would also lose CUDA's bf16 copy).
pub(crate) fn check_swiglu_stacked(
    gate_up_len: usize,
    out_len: usize,
    rows: usize,
    f: usize,
) -> Result<()> {
    ensure!(
        gate_up_len == rows * 2 * f && out_len == rows * f,
        "swiglu_forward_stacked: gate_up holds {gate_up_len} values and out {out_len}, for \
         {rows} rows of {} and {f}",
        2 * f
    );
    Ok(())
}

/// What every backend's RoPE ops require of [`Rope`] for heads of `head_dim`: an even
/// `rotary_dim` no wider than the head, and `inv_freq_len ≥ rotary_dim/2`.
pub(crate) fn check_rope(
    op: &str,
    rotary_dim: usize,
    inv_freq_len: usize,
    head_dim: usize,
) -> Result<()> {
    ensure!(
        head_dim.is_multiple_of(2) && rotary_dim.is_multiple_of(2) && rotary_dim <= head_dim,
        "{op}: rotary_dim {rotary_dim} and head_dim {head_dim} must be even, rotary_dim ≤ head_dim"
    );
    ensure!(
        inv_freq_len >= rotary_dim / 2,
        "{op}: inv_freq holds {inv_freq_len} values, fewer than rotary_dim/2 = {}",
        rotary_dim / 2
    );
    Ok(())
}
