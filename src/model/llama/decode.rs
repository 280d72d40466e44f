//! Batched decoding with a KV cache: prefill through the full forward, then one token per
//! sequence per step. [`Decoder`] owns the cache and every buffer of a step, allocated once,
//! so that from its second step on the step is a fixed sequence of ops over fixed buffers: the
//! backend records it once ([`Backend::record`], a CUDA graph) and replays it, paying one
//! launch per step instead of ~15 per layer. Only the step's inputs (token ids, positions)
//! are rewritten in place between replays.

use super::Llama;
use crate::backend::{Backend, DecodeShape};
use anyhow::{ensure, Result};
use std::collections::HashMap;

/// KV cache for batched decoding: per layer `[slots, capacity, kv_dim]`.
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub slots: usize,
    pub capacity: usize,
}

/// Everything one decode step reads and writes besides the weights and the cache.
struct StepBuffers<B: Backend> {
    ids: B::Ids,
    positions: B::Ids,
    x: B::Buf,
    rstd: B::Buf,
    normed: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    act: B::Buf,
    tmp: B::Buf,
    logits: B::Buf,
}

/// A generation's decoding state: the KV cache, the step buffers and, once recorded, the
/// step's recording. Borrowing the model keeps its weights from changing while a recording
/// that reads them exists; holding the backend keeps every step (and the recording) on the
/// backend that made the buffers.
pub struct Decoder<'a, B: Backend> {
    // declared first, so dropped before the buffers it points into
    recording: Option<B::Recording>,
    /// false once the backend declined to record (then every step launches its ops)
    may_record: bool,
    steps: usize,
    be: &'a B,
    model: &'a Llama<B>,
    cache: KvCache<B>,
    bufs: StepBuffers<B>,
}

impl<B: Backend> Llama<B> {
    pub fn new_kv_cache(&self, be: &B, slots: usize, capacity: usize) -> Result<KvCache<B>> {
        let size = slots * capacity * self.cfg.kv_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..self.cfg.num_hidden_layers {
            k.push(be.zeros(size)?);
            v.push(be.zeros(size)?);
        }
        Ok(KvCache {
            k,
            v,
            slots,
            capacity,
        })
    }

    /// Runs the distinct prompts (right-padded into one batch) through the forward (inference:
    /// nothing saved for a backward), copies each prompt's keys/values into its cache slot
    /// layer by layer (a repeated prompt's into every slot holding it), and returns the logits
    /// of each prompt's last token `[prompts, vocab]`.
    pub fn prefill(&self, be: &B, cache: &mut KvCache<B>, prompts: &[Vec<u32>]) -> Result<B::Buf> {
        ensure!(
            prompts.len() <= cache.slots,
            "prefill: {} prompts for {} cache slots",
            prompts.len(),
            cache.slots
        );
        ensure!(
            prompts.iter().all(|p| !p.is_empty()),
            "prefill: empty prompt"
        );
        let seq = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
        ensure!(
            seq <= cache.capacity,
            "prompt of {seq} tokens does not fit the cache capacity {}",
            cache.capacity
        );
        // A rollout batch holds each prompt G times (one per sample of its group): run each
        // distinct prompt once and copy its keys/values into every slot that holds it.
        let mut distinct: Vec<&[u32]> = Vec::new();
        let mut first_seen: HashMap<&[u32], usize> = HashMap::new();
        let source: Vec<usize> = prompts
            .iter()
            .map(|p| {
                *first_seen.entry(p.as_slice()).or_insert_with(|| {
                    distinct.push(p);
                    distinct.len() - 1
                })
            })
            .collect();
        let mut ids = vec![0u32; distinct.len() * seq];
        for (u, p) in distinct.iter().enumerate() {
            ids[u * seq..u * seq + p.len()].copy_from_slice(p);
        }
        let kvd = self.cfg.kv_dim();
        let hidden = self.forward_inference(be, &ids, distinct.len(), seq, |l, k, v| {
            for (b, (p, &u)) in prompts.iter().zip(&source).enumerate() {
                let dst = b * cache.capacity * kvd;
                be.copy(&mut cache.k[l], dst, k, u * seq * kvd, p.len() * kvd)?;
                be.copy(&mut cache.v[l], dst, v, u * seq * kvd, p.len() * kvd)?;
            }
            Ok(())
        })?;
        let rows: Vec<usize> = prompts
            .iter()
            .zip(&source)
            .map(|(p, &u)| u * seq + p.len() - 1)
            .collect();
        self.logits_rows(be, &hidden, &rows)
    }

    /// One decode step: `tokens[b]` sits at `positions[b]` of slot `b` (slots `0..tokens.len()`).
    /// Returns logits `[tokens.len(), vocab]`. Allocates the step's buffers on every call;
    /// [`Decoder`] keeps them (and records the step).
    pub fn decode_step(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        tokens: &[u32],
        positions: &[u32],
    ) -> Result<B::Buf> {
        self.check_step(cache, tokens, positions)?;
        let mut bufs = self.step_buffers(be, tokens.len())?;
        be.write_ids(&mut bufs.ids, tokens)?;
        be.write_ids(&mut bufs.positions, positions)?;
        self.decode_ops(be, cache, &mut bufs)?;
        Ok(bufs.logits)
    }

    fn check_step(&self, cache: &KvCache<B>, tokens: &[u32], positions: &[u32]) -> Result<()> {
        let n = tokens.len();
        ensure!(
            n == positions.len() && n <= cache.slots,
            "decode_step: {n} tokens, {} positions, {} slots",
            positions.len(),
            cache.slots
        );
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= cache.capacity) {
            anyhow::bail!(
                "decode_step: position {p} is beyond the cache capacity {}",
                cache.capacity
            );
        }
        self.check_ids(tokens)
    }

    fn step_buffers(&self, be: &B, n: usize) -> Result<StepBuffers<B>> {
        let c = &self.cfg;
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        Ok(StepBuffers {
            ids: be.upload_ids(&vec![0; n])?,
            positions: be.upload_ids(&vec![0; n])?,
            x: be.zeros(n * d)?,
            rstd: be.zeros(n)?,
            normed: be.zeros(n * d)?,
            q: be.zeros(n * qd)?,
            k: be.zeros(n * kvd)?,
            v: be.zeros(n * kvd)?,
            attn: be.zeros(n * qd)?,
            gate: be.zeros(n * f)?,
            up: be.zeros(n * f)?,
            act: be.zeros(n * f)?,
            tmp: be.zeros(n * d)?,
            logits: be.zeros(n * c.vocab_size)?,
        })
    }

    /// The step itself, from `bufs.ids` / `bufs.positions` to `bufs.logits`: the same ops on
    /// the same buffers every call, with no host value that changes between steps (positions
    /// are read on the device), which is what makes it recordable.
    fn decode_ops(&self, be: &B, cache: &mut KvCache<B>, bufs: &mut StepBuffers<B>) -> Result<()> {
        let c = &self.cfg;
        let n = be.len(&bufs.rstd);
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let eps = c.rms_norm_eps as f32;
        let shape = DecodeShape {
            batch: n,
            capacity: cache.capacity,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let StepBuffers {
            ids,
            positions,
            x,
            rstd,
            normed,
            q,
            k,
            v,
            attn,
            gate,
            up,
            act,
            tmp,
            logits,
        } = bufs;
        let _range = crate::profile::range("decode step");
        let layers = &self.params.layers;
        be.embedding_forward(x, &self.params.embed, ids, n, d)?;
        let first_norm = layers
            .first()
            .map_or(&self.params.final_norm, |lp| &lp.attn_norm);
        be.rmsnorm_forward(normed, rstd, x, first_norm, n, d, eps)?;
        // 12 launches a layer (15 with qkv biases): each residual add is fused with the norm
        // after it, RoPE of q and k with the cache write
        for (l, lp) in layers.iter().enumerate() {
            be.linear_forward(q, normed, &lp.q_proj, lp.q_bias.as_ref(), n, d, qd)?;
            be.linear_forward(k, normed, &lp.k_proj, lp.k_bias.as_ref(), n, d, kvd)?;
            be.linear_forward(v, normed, &lp.v_proj, lp.v_bias.as_ref(), n, d, kvd)?;
            let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
            be.decode_rope_cache_write(q, k, v, kc, vc, positions, &self.inv_freq, shape)?;
            be.decode_attention(attn, q, kc, vc, positions, shape)?;
            be.linear_forward(tmp, attn, &lp.o_proj, None, n, qd, d)?;
            be.add_rmsnorm_forward(x, tmp, normed, rstd, &lp.mlp_norm, n, d, eps)?;
            be.linear_forward(gate, normed, &lp.gate_proj, None, n, d, f)?;
            be.linear_forward(up, normed, &lp.up_proj, None, n, d, f)?;
            be.swiglu_forward(act, gate, up)?;
            be.linear_forward(tmp, act, &lp.down_proj, None, n, f, d)?;
            let next_norm = layers
                .get(l + 1)
                .map_or(&self.params.final_norm, |n| &n.attn_norm);
            be.add_rmsnorm_forward(x, tmp, normed, rstd, next_norm, n, d, eps)?;
        }
        be.linear_forward(logits, normed, self.lm_head(), None, n, d, c.vocab_size)
    }
}

impl<'a, B: Backend> Decoder<'a, B> {
    /// A decoder for `slots` sequences of at most `capacity` tokens (prompt included).
    pub fn new(be: &'a B, model: &'a Llama<B>, slots: usize, capacity: usize) -> Result<Self> {
        Ok(Decoder {
            recording: None,
            may_record: true,
            steps: 0,
            be,
            model,
            cache: model.new_kv_cache(be, slots, capacity)?,
            bufs: model.step_buffers(be, slots)?,
        })
    }

    pub fn cache(&self) -> &KvCache<B> {
        &self.cache
    }

    /// Whether the steps are being replayed from a recording.
    pub fn is_recorded(&self) -> bool {
        self.recording.is_some()
    }

    /// [`Llama::prefill`] into this decoder's cache.
    pub fn prefill(&mut self, prompts: &[Vec<u32>]) -> Result<B::Buf> {
        self.model.prefill(self.be, &mut self.cache, prompts)
    }

    /// One decode step for every slot: `tokens[b]` at `positions[b]`. Returns the logits
    /// `[slots, vocab]`, valid until the next step. The first step runs its ops (so that
    /// anything made on first use, such as GEMM scratch, exists), the second records them,
    /// later ones replay the recording.
    pub fn step(&mut self, tokens: &[u32], positions: &[u32]) -> Result<&B::Buf> {
        ensure!(
            tokens.len() == self.cache.slots,
            "decoder: {} tokens for {} slots (every slot decodes every step)",
            tokens.len(),
            self.cache.slots
        );
        let (be, model) = (self.be, self.model);
        model.check_step(&self.cache, tokens, positions)?;
        be.write_ids(&mut self.bufs.ids, tokens)?;
        be.write_ids(&mut self.bufs.positions, positions)?;
        let (cache, bufs) = (&mut self.cache, &mut self.bufs);
        if let Some(recording) = &self.recording {
            be.replay(recording)?;
        } else if self.may_record && self.steps > 0 {
            self.recording = be.record(&mut || model.decode_ops(be, cache, bufs))?;
            self.may_record = self.recording.is_some();
        } else {
            model.decode_ops(be, cache, bufs)?;
        }
        self.steps += 1;
        Ok(&self.bufs.logits)
    }
}
