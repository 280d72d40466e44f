//! The f32 CPU reference backend (the oracle): every op readable top to bottom, in
//! `cpu/<op family>.rs`, with rayon for threads and matrixmultiply for GEMMs. Results are
//! bit-deterministic whatever the thread count (fixed per-element summation order).
//!
//! This file is the one `impl Backend for Cpu` (a trait impl is one block, hence its ~670
//! lines): each method checks its buffers, then calls the op's body in its own file.

pub mod attention;
pub mod elementwise;
pub mod fused_logprob;
pub mod grpo_advantages;
pub mod grpo_loss;
pub mod linear;
pub mod sampling;

use super::{
    check_rope, AdvantageStats, AttnShape, Backend, DecodeShape, GrpoLossConfig, GrpoLossMetrics,
    RewardStd, Rope, ScaleRewards,
};
use anyhow::{ensure, Result};

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    bf16_kv_cache: bool,
}

impl Cpu {
    pub fn new() -> Self {
        Cpu::default()
    }

    /// The CPU twin of CUDA's `CADA_KV_CACHE=bf16` (for the tests that compare them): every
    /// value written into a KV cache ([`Backend::kv_cache_write`], so both
    /// `decode_rope_cache_write` defaults, and [`Backend::copy_into_kv_cache`]) is rounded to
    /// bf16 (RNE), as the `_bf16_kv` kernels store it, and read back as that value.
    pub fn with_bf16_kv_cache() -> Self {
        Cpu {
            bf16_kv_cache: true,
        }
    }

    /// With [`Cpu::with_bf16_kv_cache`], rounds the values of `cache` to bf16.
    fn round_cache(&self, cache: &mut [f32]) {
        if self.bf16_kv_cache {
            for x in cache {
                *x = half::bf16::from_f32(*x).to_f32();
            }
        }
    }
}

/// Checks that a buffer holds at least `need` values (a caller bug, reported, never a panic).
fn need(buf: &[f32], need: usize, what: &str) -> Result<()> {
    ensure!(
        buf.len() >= need,
        "cpu backend: `{what}` holds {} values, the op needs {need}",
        buf.len()
    );
    Ok(())
}

fn ids_in_range(ids: &[u32], n: usize, bound: usize, what: &str) -> Result<()> {
    ensure!(
        ids.len() >= n,
        "cpu backend: `{what}` holds {} ids, the op needs {n}",
        ids.len()
    );
    if let Some(&bad) = ids[..n].iter().find(|&&i| i as usize >= bound) {
        anyhow::bail!("cpu backend: `{what}` holds id {bad} ≥ {bound}");
    }
    Ok(())
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;
    /// nothing to record: the CPU runs every op as it is called
    type Recording = std::convert::Infallible;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn upload_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        Ok(ids.to_vec())
    }
    fn write_ids(&self, dst: &mut Vec<u32>, ids: &[u32]) -> Result<()> {
        ensure!(
            dst.len() == ids.len(),
            "write_ids: {} ids into a buffer of {}",
            ids.len(),
            dst.len()
        );
        dst.copy_from_slice(ids);
        Ok(())
    }
    fn record(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        work()?;
        Ok(None)
    }
    fn replay(&self, recording: &Self::Recording) -> Result<()> {
        match *recording {}
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn copy(
        &self,
        dst: &mut Vec<f32>,
        dst_off: usize,
        src: &Vec<f32>,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        need(dst, dst_off + len, "copy dst")?;
        need(src, src_off + len, "copy src")?;
        dst[dst_off..dst_off + len].copy_from_slice(&src[src_off..src_off + len]);
        Ok(())
    }
    fn copy_into_kv_cache(
        &self,
        cache: &mut Vec<f32>,
        dst_off: usize,
        src: &Vec<f32>,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        self.copy(cache, dst_off, src, src_off, len)?;
        self.round_cache(&mut cache[dst_off..dst_off + len]);
        Ok(())
    }
    fn fill(&self, buf: &mut Vec<f32>, value: f32) -> Result<()> {
        buf.iter_mut().for_each(|x| *x = value);
        Ok(())
    }

    fn add_assign(&self, y: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        ensure!(
            y.len() == x.len(),
            "add_assign: lengths {} and {}",
            y.len(),
            x.len()
        );
        elementwise::add_assign(y, x);
        Ok(())
    }
    fn scale(&self, y: &mut Vec<f32>, s: f32) -> Result<()> {
        elementwise::scale(y, s);
        Ok(())
    }
    fn sum_squares(&self, y: &Vec<f32>) -> Result<f64> {
        Ok(elementwise::sum_squares(y))
    }
    fn all_finite(&self, y: &Vec<f32>) -> Result<bool> {
        Ok(elementwise::all_finite(y))
    }

    fn embedding_forward(
        &self,
        out: &mut Vec<f32>,
        table: &Vec<f32>,
        ids: &Vec<u32>,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        need(out, n * dim, "out")?;
        ids_in_range(ids, n, table.len() / dim, "ids")?;
        elementwise::embedding_forward(&mut out[..n * dim], table, &ids[..n], dim);
        Ok(())
    }
    fn embedding_backward(
        &self,
        dtable: &mut Vec<f32>,
        dout: &Vec<f32>,
        ids: &Vec<u32>,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        need(dout, n * dim, "dout")?;
        ids_in_range(ids, n, dtable.len() / dim, "ids")?;
        elementwise::embedding_backward(dtable, dout, &ids[..n], dim);
        Ok(())
    }

    fn linear_forward(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()> {
        need(out, n * m, "out")?;
        need(x, n * k, "x")?;
        need(w, m * k, "w")?;
        if let Some(b) = bias {
            need(b, m, "bias")?;
        }
        linear::linear_forward(out, x, w, bias.map(|b| b.as_slice()), n, k, m);
        Ok(())
    }
    fn linear_backward(
        &self,
        dx: Option<&mut Vec<f32>>,
        dw: &mut Vec<f32>,
        dbias: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        n: usize,
        k: usize,
        m: usize,
    ) -> Result<()> {
        need(dout, n * m, "dout")?;
        need(x, n * k, "x")?;
        need(w, m * k, "w")?;
        need(dw, m * k, "dw")?;
        if let Some(dx) = dx {
            need(dx, n * k, "dx")?;
            linear::linear_backward_input(dx, dout, w, n, k, m);
        }
        linear::linear_backward_weight(dw, dbias.map(|b| b.as_mut_slice()), dout, x, n, k, m);
        Ok(())
    }

    fn rmsnorm_forward(
        &self,
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, n * dim, "out")?;
        need(x, n * dim, "x")?;
        need(rstd, n, "rstd")?;
        need(w, dim, "w")?;
        elementwise::rmsnorm_forward(
            &mut out[..n * dim],
            &mut rstd[..n],
            &x[..n * dim],
            w,
            dim,
            eps,
        );
        Ok(())
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rstd: &Vec<f32>,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        need(dx, n * dim, "dx")?;
        need(dout, n * dim, "dout")?;
        need(x, n * dim, "x")?;
        need(rstd, n, "rstd")?;
        elementwise::rmsnorm_backward(
            &mut dx[..n * dim],
            dw,
            &dout[..n * dim],
            &x[..n * dim],
            w,
            &rstd[..n],
            dim,
        );
        Ok(())
    }

    fn rope_forward(
        &self,
        x: &mut Vec<f32>,
        positions: &Vec<u32>,
        rope: &Rope<Vec<f32>>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        need(x, n * n_heads * head_dim, "x")?;
        ensure!(positions.len() >= n, "rope: positions too short");
        check_rope(
            "rope_forward",
            rope.rotary_dim,
            rope.inv_freq.len(),
            head_dim,
        )?;
        elementwise::rope_apply(
            &mut x[..n * n_heads * head_dim],
            &positions[..n],
            rope,
            n_heads,
            head_dim,
            1.0,
        );
        Ok(())
    }
    fn rope_backward(
        &self,
        dx: &mut Vec<f32>,
        positions: &Vec<u32>,
        rope: &Rope<Vec<f32>>,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        need(dx, n * n_heads * head_dim, "dx")?;
        ensure!(positions.len() >= n, "rope: positions too short");
        check_rope(
            "rope_backward",
            rope.rotary_dim,
            rope.inv_freq.len(),
            head_dim,
        )?;
        elementwise::rope_apply(
            &mut dx[..n * n_heads * head_dim],
            &positions[..n],
            rope,
            n_heads,
            head_dim,
            -1.0,
        );
        Ok(())
    }

    fn attention_forward(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        s: AttnShape,
    ) -> Result<()> {
        ensure!(
            s.n_kv_heads > 0 && s.n_heads.is_multiple_of(s.n_kv_heads),
            "attention: {} heads not a multiple of {} kv heads",
            s.n_heads,
            s.n_kv_heads
        );
        let n = s.batch * s.seq;
        need(out, n * s.n_heads * s.head_dim, "out")?;
        need(q, n * s.n_heads * s.head_dim, "q")?;
        need(k, n * s.n_kv_heads * s.head_dim, "k")?;
        need(v, n * s.n_kv_heads * s.head_dim, "v")?;
        need(lse, s.batch * s.n_heads * s.seq, "lse")?;
        attention::attention_forward(out, lse, q, k, v, s);
        Ok(())
    }
    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        s: AttnShape,
    ) -> Result<()> {
        let n = s.batch * s.seq;
        need(dq, n * s.n_heads * s.head_dim, "dq")?;
        need(dk, n * s.n_kv_heads * s.head_dim, "dk")?;
        need(dv, n * s.n_kv_heads * s.head_dim, "dv")?;
        need(dout, n * s.n_heads * s.head_dim, "dout")?;
        attention::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, s);
        Ok(())
    }

    fn kv_cache_write(
        &self,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        positions: &Vec<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        let kvd = s.n_kv_heads * s.head_dim;
        need(k_cache, s.batch * s.capacity * kvd, "k_cache")?;
        need(v_cache, s.batch * s.capacity * kvd, "v_cache")?;
        ids_in_range(positions, s.batch, s.capacity, "positions")?;
        attention::kv_cache_write(k_cache, v_cache, k, v, positions, s);
        for (b, &p) in positions[..s.batch].iter().enumerate() {
            let at = (b * s.capacity + p as usize) * kvd;
            self.round_cache(&mut k_cache[at..at + kvd]);
            self.round_cache(&mut v_cache[at..at + kvd]);
        }
        Ok(())
    }
    fn decode_attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        positions: &Vec<u32>,
        s: DecodeShape,
    ) -> Result<()> {
        need(out, s.batch * s.n_heads * s.head_dim, "out")?;
        need(
            k_cache,
            s.batch * s.capacity * s.n_kv_heads * s.head_dim,
            "k_cache",
        )?;
        ids_in_range(positions, s.batch, s.capacity, "positions")?;
        attention::decode_attention(out, q, k_cache, v_cache, positions, s);
        Ok(())
    }

    fn swiglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        ensure!(
            out.len() == gate.len() && gate.len() == up.len(),
            "swiglu: length mismatch"
        );
        elementwise::swiglu_forward(out, gate, up);
        Ok(())
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        ensure!(
            dgate.len() == gate.len() && dup.len() == up.len() && dout.len() == gate.len(),
            "swiglu_backward: length mismatch"
        );
        elementwise::swiglu_backward(dgate, dup, dout, gate, up);
        Ok(())
    }

    fn fused_logprob_forward(
        &self,
        logp: &mut Vec<f32>,
        entropy: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        hidden: &Vec<f32>,
        w: &Vec<f32>,
        targets: &Vec<u32>,
        n: usize,
        dim: usize,
        vocab: usize,
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
        ids_in_range(targets, n, vocab, "targets")?;
        fused_logprob::fused_logprob_forward(
            logp,
            entropy,
            lse,
            hidden,
            w,
            targets,
            n,
            dim,
            vocab,
            temperature,
        );
        Ok(())
    }
    fn fused_logprob_backward(
        &self,
        dhidden: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        dlogp: &Vec<f32>,
        hidden: &Vec<f32>,
        w: &Vec<f32>,
        targets: &Vec<u32>,
        lse: &Vec<f32>,
        n: usize,
        dim: usize,
        vocab: usize,
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
        ids_in_range(targets, n, vocab, "targets")?;
        fused_logprob::fused_logprob_backward(
            dhidden,
            dw,
            dlogp,
            hidden,
            w,
            targets,
            lse,
            n,
            dim,
            vocab,
            temperature,
        );
        Ok(())
    }

    fn grpo_loss_forward(
        &self,
        logp: &Vec<f32>,
        old_logp: &Vec<f32>,
        ref_logp: &Vec<f32>,
        mask: &Vec<f32>,
        advantages: &Vec<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<GrpoLossMetrics> {
        grpo_loss::check_grpo_inputs(
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
        Ok(grpo_loss::grpo_loss_forward(
            logp, old_logp, ref_logp, mask, advantages, batch, len, cfg,
        ))
    }
    fn grpo_loss_backward(
        &self,
        dlogp: &mut Vec<f32>,
        logp: &Vec<f32>,
        old_logp: &Vec<f32>,
        ref_logp: &Vec<f32>,
        mask: &Vec<f32>,
        advantages: &Vec<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<()> {
        grpo_loss::check_grpo_inputs(
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
        grpo_loss::grpo_loss_backward(
            dlogp, logp, old_logp, ref_logp, mask, advantages, batch, len, cfg,
        );
        Ok(())
    }

    fn grpo_loss_fused(
        &self,
        dlogp: &mut Vec<f32>,
        logp: &Vec<f32>,
        old_logp: &Vec<f32>,
        ref_logp: &Vec<f32>,
        mask: &Vec<f32>,
        advantages: &Vec<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
        grad_scale: f32,
    ) -> Result<GrpoLossMetrics> {
        ensure!(
            grad_scale.is_finite(),
            "grpo_loss_fused: `grad_scale` = {grad_scale} must be finite"
        );
        // the slow composite twin of the fused kernel: forward, backward, scale
        let metrics =
            self.grpo_loss_forward(logp, old_logp, ref_logp, mask, advantages, batch, len, cfg)?;
        self.grpo_loss_backward(
            dlogp, logp, old_logp, ref_logp, mask, advantages, batch, len, cfg,
        )?;
        self.scale(dlogp, grad_scale)?;
        Ok(metrics)
    }

    fn grpo_advantages(
        &self,
        advantages: &mut Vec<f32>,
        rewards: &Vec<f32>,
        group_size: usize,
        scale: ScaleRewards,
        std: RewardStd,
        eps: f32,
    ) -> Result<AdvantageStats> {
        need(advantages, rewards.len(), "advantages")?;
        let (a, stats) = grpo_advantages::group_advantages(rewards, group_size, scale, std, eps)?;
        advantages[..a.len()].copy_from_slice(&a);
        Ok(stats)
    }

    fn adamw_step(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        step: u64,
    ) -> Result<()> {
        ensure!(
            param.len() == grad.len() && m.len() == param.len() && v.len() == param.len(),
            "adamw_step: length mismatch"
        );
        ensure!(step >= 1, "adamw_step: step counts from 1");
        elementwise::adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step);
        Ok(())
    }

    fn sample(
        &self,
        logits: &Vec<f32>,
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
        Ok((0..batch)
            .map(|b| {
                sampling::sample_row(
                    &logits[b * vocab..(b + 1) * vocab],
                    uniforms[b],
                    temperature,
                    top_p,
                    top_k,
                )
            })
            .collect())
    }
}
