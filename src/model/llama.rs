//! The Llama-family layer stack (Llama, Qwen2, Qwen3, Mistral, Phi-3 math), written once against
//! [`Backend`]. Forward caches what the backward (llama/backward.rs) needs; the backward walks the
//! layers in reverse, llm.c style.
//!
//! Layer i:  h = x + o_proj(attn(rope(q(n1)), rope(k(n1)), v(n1))),  n1 = rmsnorm(x)
//!           (Qwen3: q and k each RMSNorm-ed per head before RoPE)
//!           y = h + down(silu(gate(n2)) * up(n2)),                    n2 = rmsnorm(h)
//! Head:     hidden = rmsnorm(y_L); logits = hidden · lm_headᵀ (lm_head = embed when tied).

use super::config::LlamaConfig;
use super::weights::{LayerParams, Params};
use crate::backend::{AttnShape, Backend, QkNormRope, Rope};
use anyhow::{ensure, Result};

mod backward;
mod decode;
pub use decode::{Decoder, KvCache};

pub struct Llama<B: Backend> {
    pub cfg: LlamaConfig,
    pub params: Params<B::Buf>,
    /// RoPE: the inverse frequencies, the rotated dims and their scale
    rope: Rope<B::Buf>,
    /// LongRoPE: the original length and the RoPE of a forward that reaches beyond it
    long_rope: Option<(usize, Rope<B::Buf>)>,
}

/// What one layer's backward needs from its forward.
struct LayerActs<B: Backend> {
    x_in: B::Buf,
    rstd1: B::Buf,
    n1: B::Buf,
    /// Qwen3: q and k before their per-head RMSNorm, and its 1/rms per head row (empty else)
    q_raw: B::Buf,
    k_raw: B::Buf,
    rstd_q: B::Buf,
    rstd_k: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    lse: B::Buf,
    h: B::Buf,
    rstd2: B::Buf,
    n2: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
}

impl<B: Backend> LayerActs<B> {
    /// Empty buffers: `layer_forward` sizes each just before its op writes it (so the saving
    /// forward allocates gate/up/act only after the attention's inputs were narrowed, as the
    /// peak memory of a long sequence wants), once for the inference forward's reused set.
    fn empty(be: &B) -> Result<Self> {
        Ok(LayerActs {
            x_in: be.zeros(0)?,
            rstd1: be.zeros(0)?,
            n1: be.zeros(0)?,
            q_raw: be.zeros(0)?,
            k_raw: be.zeros(0)?,
            rstd_q: be.zeros(0)?,
            rstd_k: be.zeros(0)?,
            q: be.zeros(0)?,
            k: be.zeros(0)?,
            v: be.zeros(0)?,
            attn: be.zeros(0)?,
            lse: be.zeros(0)?,
            h: be.zeros(0)?,
            rstd2: be.zeros(0)?,
            n2: be.zeros(0)?,
            gate: be.zeros(0)?,
            up: be.zeros(0)?,
            act: be.zeros(0)?,
        })
    }
}

/// `buf` as a zeroed buffer of `len` values unless it already has that length (reused).
fn sized<B: Backend>(be: &B, buf: &mut B::Buf, len: usize) -> Result<()> {
    if be.len(buf) != len {
        *buf = be.zeros(len)?;
    }
    Ok(())
}

/// The result of a forward pass over a right-padded batch `[batch, seq]`.
pub struct Forward<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    ids: B::Ids,
    positions: B::Ids,
    layers: Vec<LayerActs<B>>,
    x_final: B::Buf,
    rstd_final: B::Buf,
    /// final normed hidden states `[batch·seq, hidden]`
    pub hidden: B::Buf,
}

impl<B: Backend> Llama<B> {
    pub fn from_host(be: &B, cfg: LlamaConfig, host: &Params<Vec<f32>>) -> Result<Self> {
        // the weights must be the config's (a missing q/k norm or bias would silently run
        // another model's math)
        let spec = Params::spec(&cfg);
        let (want, got) = (spec.tensors(), host.tensors());
        ensure!(
            want.len() == got.len(),
            "model weights: {} tensors for a config that needs {} ({})",
            got.len(),
            want.len(),
            cfg.architecture
        );
        for (s, t) in want.iter().zip(&got) {
            ensure!(
                s.numel() == t.len(),
                "model weights: `{}` holds {} values, the config needs {:?}",
                s.name,
                t.len(),
                s.shape
            );
        }
        let params = host.try_map(|t| be.upload(t))?;
        let rope_with = |inv_freq: &[f32]| -> Result<Rope<B::Buf>> {
            Ok(Rope {
                inv_freq: be.upload(inv_freq)?,
                rotary_dim: cfg.rotary_dim(),
                scale: cfg.rope_scale(),
            })
        };
        let rope = rope_with(&cfg.rope_inv_freq())?;
        let long_rope = match cfg.long_rope_inv_freq() {
            Some((original, inv_freq)) => Some((original, rope_with(&inv_freq)?)),
            None => None,
        };
        Ok(Llama {
            cfg,
            params,
            rope,
            long_rope,
        })
    }

    /// The RoPE of a forward (or decode step) whose positions reach `len − 1`: LongRoPE's long
    /// factors once `len` exceeds the original length, as transformers picks them (by the
    /// batch's longest position, padding included), else the one RoPE.
    fn rope_for(&self, len: usize) -> &Rope<B::Buf> {
        self.rope_long_or_not(self.uses_long_rope(len))
    }

    /// What Qwen3's q/k norm + RoPE reads over `tokens` tokens of one layer.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope_args<'a>(
        &self,
        q_raw: &'a B::Buf,
        k_raw: &'a B::Buf,
        q_norm: &'a B::Buf,
        k_norm: &'a B::Buf,
        positions: &'a B::Ids,
        rope: &'a Rope<B::Buf>,
        tokens: usize,
    ) -> QkNormRope<'a, B::Buf, B::Ids> {
        let c = &self.cfg;
        QkNormRope {
            q_raw,
            k_raw,
            q_norm,
            k_norm,
            positions,
            rope,
            tokens,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        }
    }

    /// LongRoPE's long RoPE when `long` (and the model has one), else the one RoPE.
    fn rope_long_or_not(&self, long: bool) -> &Rope<B::Buf> {
        match &self.long_rope {
            Some((_, rope)) if long => rope,
            _ => &self.rope,
        }
    }

    /// Whether [`Llama::rope_for`] `len` is LongRoPE's long one.
    fn uses_long_rope(&self, len: usize) -> bool {
        matches!(self.long_rope, Some((original, _)) if len > original)
    }

    pub fn to_host(&self, be: &B) -> Result<Params<Vec<f32>>> {
        self.params.try_map(|t| be.download(t))
    }

    /// Zero-filled buffers shaped like the parameters (gradients, optimiser moments).
    pub fn zeros_like_params(&self, be: &B) -> Result<Params<B::Buf>> {
        self.params.try_map(|t| be.zeros(be.len(t)))
    }

    pub fn lm_head(&self) -> &B::Buf {
        self.params.lm_head.as_ref().unwrap_or(&self.params.embed)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            anyhow::bail!(
                "token id {bad} is out of range for a model with vocab_size {}",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    fn check_forward(&self, ids: &[u32], batch: usize, seq: usize) -> Result<()> {
        ensure!(
            ids.len() == batch * seq,
            "forward: {} ids for batch {batch} × seq {seq}",
            ids.len()
        );
        // the positions or a sliding window, whichever is less
        ensure!(
            seq <= self.cfg.max_sequence_len(),
            "sequence of {seq} tokens exceeds the {}: this engine's forward is exact only \
             within it",
            self.cfg.max_sequence_what()
        );
        self.check_ids(ids)
    }

    fn attn_shape(&self, batch: usize, seq: usize) -> AttnShape {
        AttnShape {
            batch,
            seq,
            n_heads: self.cfg.num_attention_heads,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    /// Forward over `ids` laid out `[batch, seq]` (right-padded; padding may be any valid id).
    /// The saved activations are only for [`Llama::backward`]: a backend may keep some of them
    /// in bf16 alone (the `Backend::keep_as_*` hints).
    pub fn forward(&self, be: &B, ids: &[u32], batch: usize, seq: usize) -> Result<Forward<B>> {
        let c = &self.cfg;
        self.check_forward(ids, batch, seq)?;
        let n = batch * seq;
        let d = c.hidden_size;
        let eps = c.rms_norm_eps as f32;
        let shape = self.attn_shape(batch, seq);
        let _range = crate::profile::range("model forward");
        let ids_d = be.upload_ids(ids)?;
        let pos: Vec<u32> = (0..n).map(|i| (i % seq) as u32).collect();
        let positions = be.upload_ids(&pos)?;

        let mut x = be.zeros(n * d)?;
        be.embedding_forward(&mut x, &self.params.embed, &ids_d, n, d)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (l, lp) in self.params.layers.iter().enumerate() {
            let _layer = crate::profile::range_with(|| format!("layer {l} forward"));
            let mut a = LayerActs::empty(be)?;
            let mut y = be.zeros(n * d)?;
            self.layer_forward(be, lp, &x, &mut a, &mut y, &positions, shape, true)?;
            a.x_in = std::mem::replace(&mut x, y);
            layers.push(a);
        }
        let (mut rstd_final, mut hidden) = (be.zeros(n)?, be.zeros(n * d)?);
        be.rmsnorm_forward(
            &mut hidden,
            &mut rstd_final,
            &x,
            &self.params.final_norm,
            n,
            d,
            eps,
        )?;
        Ok(Forward {
            batch,
            seq,
            ids: ids_d,
            positions,
            layers,
            x_final: x,
            rstd_final,
            hidden,
        })
    }

    /// The final normed hidden states `[batch·seq, hidden]` of `ids` without saving anything
    /// for a backward: one layer's buffers, reused by every layer (the reference model's and the
    /// old policy's log-probs, scoring, the rollout prefill). `each_layer(l, k, v)` sees layer
    /// `l`'s post-RoPE keys and values (f32) before the next layer overwrites them. Equal to
    /// [`Llama::forward`]'s `hidden`: the same ops on the same values.
    pub fn forward_inference(
        &self,
        be: &B,
        ids: &[u32],
        batch: usize,
        seq: usize,
        mut each_layer: impl FnMut(usize, &B::Buf, &B::Buf) -> Result<()>,
    ) -> Result<B::Buf> {
        let c = &self.cfg;
        self.check_forward(ids, batch, seq)?;
        let n = batch * seq;
        let d = c.hidden_size;
        let _range = crate::profile::range("model forward (inference)");
        let ids_d = be.upload_ids(ids)?;
        let positions = be.upload_ids(&(0..n).map(|i| (i % seq) as u32).collect::<Vec<_>>())?;
        let mut x = be.zeros(n * d)?;
        be.embedding_forward(&mut x, &self.params.embed, &ids_d, n, d)?;
        let mut a = LayerActs::empty(be)?;
        let mut y = be.zeros(n * d)?;
        let shape = self.attn_shape(batch, seq);
        for (l, lp) in self.params.layers.iter().enumerate() {
            self.layer_forward(be, lp, &x, &mut a, &mut y, &positions, shape, false)?;
            each_layer(l, &a.k, &a.v)?;
            std::mem::swap(&mut x, &mut y);
        }
        let (mut rstd, mut hidden) = (be.zeros(n)?, be.zeros(n * d)?);
        let eps = c.rms_norm_eps as f32;
        be.rmsnorm_forward(
            &mut hidden,
            &mut rstd,
            &x,
            &self.params.final_norm,
            n,
            d,
            eps,
        )?;
        Ok(hidden)
    }

    /// One layer on `x` (`[n, hidden]`): its activations into `a` (all but `x_in`, which the
    /// caller keeps), its output into `y`. `saving`: the activations are kept for a backward, so
    /// the `Backend::keep_as_*` hints may narrow them; inference gives none, as its buffers are
    /// reused by the next layer (and k, v keep their f32 values for a KV cache).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        be: &B,
        lp: &LayerParams<B::Buf>,
        x: &B::Buf,
        a: &mut LayerActs<B>,
        y: &mut B::Buf,
        positions: &B::Ids,
        shape: AttnShape,
        saving: bool,
    ) -> Result<()> {
        let c = &self.cfg;
        let n = shape.batch * shape.seq;
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let eps = c.rms_norm_eps as f32;
        let hint = |be: &B, buf: &mut B::Buf, keep: fn(&B, &mut B::Buf) -> Result<()>| {
            if saving {
                keep(be, buf)
            } else {
                Ok(())
            }
        };
        let lse_len = shape.batch * c.num_attention_heads * shape.seq;
        sized(be, &mut a.rstd1, n)?;
        sized(be, &mut a.n1, n * d)?;
        be.rmsnorm_forward(&mut a.n1, &mut a.rstd1, x, &lp.attn_norm, n, d, eps)?;
        // n1, n2 and act are read from here on only as GEMM inputs (these projections and
        // their backward): a bf16-GEMM backend converts each once and keeps only that
        hint(be, &mut a.n1, B::keep_as_gemm_input)?;
        sized(be, &mut a.q, n * qd)?;
        sized(be, &mut a.k, n * kvd)?;
        sized(be, &mut a.v, n * kvd)?;
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rope = self.rope_for(shape.seq);
        match (&lp.q_norm, &lp.k_norm) {
            (Some(q_norm), Some(k_norm)) => {
                // Qwen3: each head's row of q and of k RMSNorm-ed (rows of head_dim), then RoPE
                sized(be, &mut a.q_raw, n * qd)?;
                sized(be, &mut a.k_raw, n * kvd)?;
                sized(be, &mut a.rstd_q, n * hq)?;
                sized(be, &mut a.rstd_k, n * hkv)?;
                let (qb, kb) = (lp.q_bias.as_ref(), lp.k_bias.as_ref());
                be.linear_forward(&mut a.q_raw, &a.n1, &lp.q_proj, qb, n, d, qd)?;
                be.linear_forward(&mut a.k_raw, &a.n1, &lp.k_proj, kb, n, d, kvd)?;
                let args =
                    self.qk_norm_rope_args(&a.q_raw, &a.k_raw, q_norm, k_norm, positions, rope, n);
                be.qk_norm_rope_forward(
                    &mut a.q,
                    &mut a.k,
                    &mut a.rstd_q,
                    &mut a.rstd_k,
                    &args,
                    eps,
                )?;
            }
            _ => {
                be.linear_forward(&mut a.q, &a.n1, &lp.q_proj, lp.q_bias.as_ref(), n, d, qd)?;
                be.linear_forward(&mut a.k, &a.n1, &lp.k_proj, lp.k_bias.as_ref(), n, d, kvd)?;
                be.rope_forward(&mut a.q, positions, rope, n, hq, hd)?;
                be.rope_forward(&mut a.k, positions, rope, n, hkv, hd)?;
            }
        }
        be.linear_forward(&mut a.v, &a.n1, &lp.v_proj, lp.v_bias.as_ref(), n, d, kvd)?;
        // q, k, v are read from here on only by the attention
        hint(be, &mut a.q, B::keep_as_attention_input)?;
        hint(be, &mut a.k, B::keep_as_attention_input)?;
        hint(be, &mut a.v, B::keep_as_attention_input)?;
        sized(be, &mut a.attn, n * qd)?;
        sized(be, &mut a.lse, lse_len)?;
        be.attention_forward(&mut a.attn, &mut a.lse, &a.q, &a.k, &a.v, shape)?;
        // attn is read from here on only by the output projection and the attention backward
        hint(be, &mut a.attn, B::keep_as_attention_output)?;
        sized(be, &mut a.h, n * d)?;
        be.linear_forward(&mut a.h, &a.attn, &lp.o_proj, None, n, qd, d)?;
        be.add_assign(&mut a.h, x)?;
        sized(be, &mut a.rstd2, n)?;
        sized(be, &mut a.n2, n * d)?;
        be.rmsnorm_forward(&mut a.n2, &mut a.rstd2, &a.h, &lp.mlp_norm, n, d, eps)?;
        hint(be, &mut a.n2, B::keep_as_gemm_input)?;
        sized(be, &mut a.gate, n * f)?;
        sized(be, &mut a.up, n * f)?;
        sized(be, &mut a.act, n * f)?;
        be.linear_forward(&mut a.gate, &a.n2, &lp.gate_proj, None, n, d, f)?;
        be.linear_forward(&mut a.up, &a.n2, &lp.up_proj, None, n, d, f)?;
        be.swiglu_forward(&mut a.act, &a.gate, &a.up)?;
        hint(be, &mut a.act, B::keep_as_gemm_input)?;
        // gate and up are read from here on only by the SwiGLU backward
        hint(be, &mut a.gate, B::keep_as_swiglu_input)?;
        hint(be, &mut a.up, B::keep_as_swiglu_input)?;
        be.linear_forward(y, &a.act, &lp.down_proj, None, n, f, d)?;
        be.add_assign(y, &a.h)
    }

    /// Per-position log-probs of `targets` (`[batch·seq]`) under `softmax(logits/temperature)`,
    /// with the entropy, via the fused head. Returns (logp, entropy, lse) device buffers.
    pub fn token_logprobs(
        &self,
        be: &B,
        fwd: &Forward<B>,
        targets: &B::Ids,
        temperature: f32,
    ) -> Result<(B::Buf, B::Buf, B::Buf)> {
        self.hidden_logprobs(be, &fwd.hidden, fwd.batch * fwd.seq, targets, temperature)
    }

    /// [`Llama::token_logprobs`] from `n` final hidden states (e.g. of
    /// [`Llama::forward_inference`]).
    pub fn hidden_logprobs(
        &self,
        be: &B,
        hidden: &B::Buf,
        n: usize,
        targets: &B::Ids,
        temperature: f32,
    ) -> Result<(B::Buf, B::Buf, B::Buf)> {
        let _range = crate::profile::range("fused_logprob forward");
        let (mut logp, mut ent, mut lse) = (be.zeros(n)?, be.zeros(n)?, be.zeros(n)?);
        be.fused_logprob_forward(
            &mut logp,
            &mut ent,
            &mut lse,
            hidden,
            self.lm_head(),
            targets,
            n,
            self.cfg.hidden_size,
            self.cfg.vocab_size,
            temperature,
        )?;
        Ok((logp, ent, lse))
    }

    /// Backward of [`Llama::token_logprobs`] then of the whole stack: `dlogp [batch·seq]`.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_backward(
        &self,
        be: &B,
        fwd: &Forward<B>,
        targets: &B::Ids,
        lse: &B::Buf,
        dlogp: &B::Buf,
        temperature: f32,
        grads: &mut Params<B::Buf>,
    ) -> Result<()> {
        let n = fwd.batch * fwd.seq;
        let d = self.cfg.hidden_size;
        let mut dhidden = be.zeros(n * d)?;
        let dw = grads.lm_head.as_mut().unwrap_or(&mut grads.embed);
        let range = crate::profile::range("fused_logprob backward");
        be.fused_logprob_backward(
            &mut dhidden,
            dw,
            dlogp,
            &fwd.hidden,
            self.lm_head(),
            targets,
            lse,
            n,
            d,
            self.cfg.vocab_size,
            temperature,
        )?;
        drop(range);
        self.backward(be, fwd, &dhidden, grads)
    }

    /// Full logits for selected rows of the final hidden states: `[rows.len(), vocab]`.
    /// Used for sampling (a handful of rows), never for training.
    pub fn logits_rows(&self, be: &B, hidden: &B::Buf, rows: &[usize]) -> Result<B::Buf> {
        let d = self.cfg.hidden_size;
        let mut sel = be.zeros(rows.len() * d)?;
        for (i, &r) in rows.iter().enumerate() {
            be.copy(&mut sel, i * d, hidden, r * d, d)?;
        }
        let mut logits = be.zeros(rows.len() * self.cfg.vocab_size)?;
        be.linear_forward(
            &mut logits,
            &sel,
            self.lm_head(),
            None,
            rows.len(),
            d,
            self.cfg.vocab_size,
        )?;
        Ok(logits)
    }
}

/// Next-token targets for a right-padded batch: `targets[b, t] = ids[b, t+1]`, and 0 at the last
/// position (masked by the caller).
pub fn shifted_targets(ids: &[u32], batch: usize, seq: usize) -> Vec<u32> {
    let mut t = vec![0u32; batch * seq];
    for b in 0..batch {
        for i in 0..seq.saturating_sub(1) {
            t[b * seq + i] = ids[b * seq + i + 1];
        }
    }
    t
}
