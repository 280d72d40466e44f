//! Batched decoding with a KV cache: prefill through the full forward, then one token per
//! sequence per step. [`Decoder`] owns the cache and every buffer of a step, allocated once,
//! so that from its second step on the step is a fixed sequence of ops over fixed buffers: the
//! backend records it once ([`Backend::record`], a CUDA graph) and replays it, paying one
//! launch per step instead of 9 to 12 per layer. Only the step's inputs (token ids, positions)
//! are rewritten in place between replays.

use super::Llama;
use crate::backend::{Backend, DecodeShape, Rope};
use anyhow::{ensure, Result};
use std::collections::HashMap;

/// KV cache for batched decoding: per layer `[slots, capacity, kv_dim]`, f32 or as the backend
/// keeps it (`Backend::keep_as_kv_cache`).
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
    attn: B::Buf,
    act: B::Buf,
    tmp: B::Buf,
    logits: B::Buf,
    projections: Projections<B>,
}

/// How a step runs the q/k/v and gate/up projections.
enum Projections<B: Backend> {
    /// One GEMM per weight, as the training forward does
    Separate {
        k: B::Buf,
        v: B::Buf,
        gate: B::Buf,
        up: B::Buf,
        /// Qwen3's q and k before their per-head RMSNorm, and its 1/rms (empty without one)
        qk_raw: Option<QkRaw<B>>,
    },
    /// One GEMM for q/k/v and one for gate/up, over weights stacked along their output rows
    /// ([`StackedLayer`]): at a decode step's few rows each GEMM costs about its launch and
    /// latency whatever its width, so 7 GEMMs a layer become 4.
    Stacked {
        layers: Vec<StackedLayer<B>>,
        qkv: B::Buf,
        gate_up: B::Buf,
    },
}

/// A decode step's q and k before Qwen3's per-head RMSNorm, and the norm's 1/rms per head row.
struct QkRaw<B: Backend> {
    q: B::Buf,
    k: B::Buf,
    rstd_q: B::Buf,
    rstd_k: B::Buf,
}

/// One layer's projection weights stacked along their output rows, a copy made for one
/// generation (the weights cannot change under it: the decoder borrows the model). Costs the
/// copy's bytes while the decoder lives: on CUDA in bf16 GEMM mode 2 per parameter of these
/// five weights (only the bf16 copy is kept, [`Backend::keep_as_gemm_weight`]; 6 with
/// narrowing switched off), 4 otherwise (Qwen2.5-0.5B: 234 M parameters, 0.47 / 0.94 GB).
struct StackedLayer<B: Backend> {
    /// `[q_proj; k_proj; v_proj]`, `[qd + 2·kvd, hidden]`
    qkv: B::Buf,
    /// the three biases stacked the same way (zeros for a missing one), when any exists
    qkv_bias: Option<B::Buf>,
    /// `[gate_proj; up_proj]`, `[2·intermediate, hidden]`
    gate_up: B::Buf,
}

/// Whether a decoder stacks its projection weights: `CADA_STACKED_DECODE=1` stacks, `=0` runs
/// one GEMM per weight (for comparison), unset leaves it to the backend
/// ([`Backend::stacks_decode_projections`]: CUDA, whose decode GEMMs are latency-bound, yes; the
/// CPU, where it measured no faster and would cost the copies' memory, no).
fn stacking_from_env<B: Backend>(be: &B) -> Result<bool> {
    match std::env::var("CADA_STACKED_DECODE") {
        Err(std::env::VarError::NotPresent) => parse_stacking(None, be.stacks_decode_projections()),
        Ok(v) => parse_stacking(Some(&v), be.stacks_decode_projections()),
        Err(e) => anyhow::bail!("CADA_STACKED_DECODE: {e}"),
    }
}

/// The value of `CADA_STACKED_DECODE`, if set; `backend` is the backend's preference.
fn parse_stacking(value: Option<&str>, backend: bool) -> Result<bool> {
    match value {
        None => Ok(backend),
        Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(v) => anyhow::bail!("CADA_STACKED_DECODE={v:?}: expected `0` or `1`"),
    }
}

/// `parts` (row-major, same width) one after another: rows stacked.
fn stack_rows<B: Backend>(be: &B, parts: &[&B::Buf]) -> Result<B::Buf> {
    let mut out = be.zeros(parts.iter().map(|p| be.len(p)).sum())?;
    let mut at = 0;
    for p in parts {
        be.copy(&mut out, at, p, 0, be.len(p))?;
        at += be.len(p);
    }
    Ok(out)
}

/// A generation's decoding state: the KV cache, the step buffers and, once recorded, the
/// step's recording. Borrowing the model keeps its weights from changing while a recording
/// that reads them exists; holding the backend keeps every step (and the recording) on the
/// backend that made the buffers.
pub struct Decoder<'a, B: Backend> {
    // declared first, so dropped before the buffers it points into
    recording: Option<B::Recording>,
    /// whether the recording rotates with LongRoPE's long factors
    recorded_long_rope: bool,
    /// false once the backend declined to record (then every step launches its ops)
    may_record: bool,
    /// LongRoPE: whether the cache's keys were rotated with the long factors
    cache_long_rope: bool,
    /// each slot's tokens at positions 0.. as the cache holds them (prompt, then each step's
    /// token at its position), kept only for a LongRoPE model, which prefills them again with
    /// the long factors when a step first passes the original length
    history: Option<Vec<Vec<u32>>>,
    steps: usize,
    be: &'a B,
    model: &'a Llama<B>,
    cache: KvCache<B>,
    bufs: StepBuffers<B>,
}

impl<B: Backend> Llama<B> {
    pub fn new_kv_cache(&self, be: &B, slots: usize, capacity: usize) -> Result<KvCache<B>> {
        ensure!(
            capacity <= self.cfg.max_sequence_len(),
            "a KV cache of {capacity} positions exceeds the {}: this engine is exact only \
             within it (ask for fewer tokens)",
            self.cfg.max_sequence_what()
        );
        let size = slots * capacity * self.cfg.kv_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for _ in 0..self.cfg.num_hidden_layers {
            // the backend may keep the cache narrower (CUDA: CADA_KV_CACHE=bf16)
            for side in [&mut k, &mut v] {
                let mut buf = be.zeros(size)?;
                be.keep_as_kv_cache(&mut buf)?;
                side.push(buf);
            }
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
                be.copy_into_kv_cache(&mut cache.k[l], dst, k, u * seq * kvd, p.len() * kvd)?;
                be.copy_into_kv_cache(&mut cache.v[l], dst, v, u * seq * kvd, p.len() * kvd)?;
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
    /// [`Decoder`] keeps them (and records the step). A LongRoPE model rotates with the RoPE
    /// of the step's longest position and leaves the cache as it is; [`Decoder`] instead
    /// prefills every slot again when a step first passes the original length, as transformers
    /// does.
    pub fn decode_step(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        tokens: &[u32],
        positions: &[u32],
    ) -> Result<B::Buf> {
        self.check_step(cache, tokens, positions)?;
        let mut bufs = self.step_buffers(be, tokens.len(), false)?;
        be.write_ids(&mut bufs.ids, tokens)?;
        be.write_ids(&mut bufs.positions, positions)?;
        let rope = self.rope_for(step_len(positions));
        self.decode_ops(be, cache, &mut bufs, rope)?;
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

    fn step_buffers(&self, be: &B, n: usize, stacked: bool) -> Result<StepBuffers<B>> {
        let c = &self.cfg;
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let projections = if stacked {
            Projections::Stacked {
                layers: self.stacked_layers(be)?,
                qkv: be.zeros(n * (qd + 2 * kvd))?,
                gate_up: be.zeros(n * 2 * f)?,
            }
        } else {
            Projections::Separate {
                k: be.zeros(n * kvd)?,
                v: be.zeros(n * kvd)?,
                gate: be.zeros(n * f)?,
                up: be.zeros(n * f)?,
                qk_raw: match c.qk_norm {
                    true => Some(QkRaw {
                        q: be.zeros(n * qd)?,
                        k: be.zeros(n * kvd)?,
                        rstd_q: be.zeros(n * c.num_attention_heads)?,
                        rstd_k: be.zeros(n * c.num_key_value_heads)?,
                    }),
                    false => None,
                },
            }
        };
        Ok(StepBuffers {
            ids: be.upload_ids(&vec![0; n])?,
            positions: be.upload_ids(&vec![0; n])?,
            x: be.zeros(n * d)?,
            rstd: be.zeros(n)?,
            normed: be.zeros(n * d)?,
            q: be.zeros(n * qd)?,
            attn: be.zeros(n * qd)?,
            act: be.zeros(n * f)?,
            tmp: be.zeros(n * d)?,
            logits: be.zeros(n * c.vocab_size)?,
            projections,
        })
    }

    fn stacked_layers(&self, be: &B) -> Result<Vec<StackedLayer<B>>> {
        let (qd, kvd) = (self.cfg.q_dim(), self.cfg.kv_dim());
        self.params
            .layers
            .iter()
            .map(|lp| {
                let mut qkv = stack_rows(be, &[&lp.q_proj, &lp.k_proj, &lp.v_proj])?;
                let mut gate_up = stack_rows(be, &[&lp.gate_proj, &lp.up_proj])?;
                be.keep_as_gemm_weight(&mut qkv)?;
                be.keep_as_gemm_weight(&mut gate_up)?;
                let biases = [(&lp.q_bias, 0), (&lp.k_bias, qd), (&lp.v_bias, qd + kvd)];
                let qkv_bias = if biases.iter().any(|(b, _)| b.is_some()) {
                    let mut stacked = be.zeros(qd + 2 * kvd)?;
                    for (b, at) in biases {
                        if let Some(b) = b {
                            be.copy(&mut stacked, at, b, 0, be.len(b))?;
                        }
                    }
                    Some(stacked)
                } else {
                    None
                };
                Ok(StackedLayer {
                    qkv,
                    qkv_bias,
                    gate_up,
                })
            })
            .collect()
    }

    /// The step itself, from `bufs.ids` / `bufs.positions` to `bufs.logits`: the same ops on
    /// the same buffers every call, with no host value that changes between steps (positions
    /// are read on the device), which is what makes it recordable. `rope`: the step's
    /// ([`Llama::rope_for`] its longest position + 1).
    fn decode_ops(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        bufs: &mut StepBuffers<B>,
        rope: &Rope<B::Buf>,
    ) -> Result<()> {
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
            attn,
            act,
            tmp,
            logits,
            projections,
        } = bufs;
        let _range = crate::profile::range("decode step");
        let layers = &self.params.layers;
        be.embedding_forward(x, &self.params.embed, ids, n, d)?;
        let first_norm = layers
            .first()
            .map_or(&self.params.final_norm, |lp| &lp.attn_norm);
        be.rmsnorm_forward(normed, rstd, x, first_norm, n, d, eps)?;
        // 12 launches a layer with separate projections (15 with qkv biases, 14 with Qwen3's
        // q/k norms), 9 stacked (10 with qkv biases; Qwen3's norms fused into its RoPE): each
        // residual add is fused with the norm after it, RoPE of q and k with the cache write
        for (l, lp) in layers.iter().enumerate() {
            let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
            match projections {
                Projections::Separate { k, v, qk_raw, .. } => {
                    let (qb, kb) = (lp.q_bias.as_ref(), lp.k_bias.as_ref());
                    match (qk_raw, &lp.q_norm, &lp.k_norm) {
                        (Some(r), Some(qn), Some(kn)) => {
                            let (hq, hkv, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
                            be.linear_forward(&mut r.q, normed, &lp.q_proj, qb, n, d, qd)?;
                            be.linear_forward(&mut r.k, normed, &lp.k_proj, kb, n, d, kvd)?;
                            be.head_rmsnorm_forward(q, &mut r.rstd_q, &r.q, qn, n * hq, hd, eps)?;
                            be.head_rmsnorm_forward(k, &mut r.rstd_k, &r.k, kn, n * hkv, hd, eps)?;
                        }
                        _ => {
                            be.linear_forward(q, normed, &lp.q_proj, qb, n, d, qd)?;
                            be.linear_forward(k, normed, &lp.k_proj, kb, n, d, kvd)?;
                        }
                    }
                    be.linear_forward(v, normed, &lp.v_proj, lp.v_bias.as_ref(), n, d, kvd)?;
                    be.decode_rope_cache_write(q, k, v, kc, vc, positions, rope, shape)?;
                }
                Projections::Stacked { layers, qkv, .. } => {
                    let sl = &layers[l];
                    let width = qd + 2 * kvd;
                    be.linear_forward(qkv, normed, &sl.qkv, sl.qkv_bias.as_ref(), n, d, width)?;
                    match (&lp.q_norm, &lp.k_norm) {
                        // Qwen3: its per-head q/k norms fused in too
                        (Some(qn), Some(kn)) => be.decode_qk_norm_rope_cache_write_stacked(
                            q, qkv, kc, vc, positions, rope, qn, kn, eps, shape,
                        )?,
                        _ => be.decode_rope_cache_write_stacked(
                            q, qkv, kc, vc, positions, rope, shape,
                        )?,
                    }
                }
            }
            be.decode_attention(attn, q, kc, vc, positions, shape)?;
            be.linear_forward(tmp, attn, &lp.o_proj, None, n, qd, d)?;
            be.add_rmsnorm_forward(x, tmp, normed, rstd, &lp.mlp_norm, n, d, eps)?;
            match projections {
                Projections::Separate { gate, up, .. } => {
                    be.linear_forward(gate, normed, &lp.gate_proj, None, n, d, f)?;
                    be.linear_forward(up, normed, &lp.up_proj, None, n, d, f)?;
                    be.swiglu_forward(act, gate, up)?;
                }
                Projections::Stacked {
                    layers, gate_up, ..
                } => {
                    be.linear_forward(gate_up, normed, &layers[l].gate_up, None, n, d, 2 * f)?;
                    be.swiglu_forward_stacked(act, gate_up, n, f)?;
                }
            }
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
    /// A decoder for `slots` sequences of at most `capacity` tokens (prompt included), with
    /// stacked projection weights where the backend prefers them (`CADA_STACKED_DECODE=0|1`
    /// overrides).
    pub fn new(be: &'a B, model: &'a Llama<B>, slots: usize, capacity: usize) -> Result<Self> {
        Self::with_stacking(be, model, slots, capacity, stacking_from_env(be)?)
    }

    /// [`Decoder::new`] with the projections' form chosen: `stacked` runs one GEMM for q/k/v
    /// and one for gate/up over copies of the weights stacked for this generation; otherwise
    /// one GEMM per weight, as [`Llama::decode_step`] does.
    pub fn with_stacking(
        be: &'a B,
        model: &'a Llama<B>,
        slots: usize,
        capacity: usize,
        stacked: bool,
    ) -> Result<Self> {
        Ok(Decoder {
            recording: None,
            recorded_long_rope: false,
            may_record: true,
            cache_long_rope: false,
            history: model.long_rope.as_ref().map(|_| vec![Vec::new(); slots]),
            steps: 0,
            be,
            model,
            cache: model.new_kv_cache(be, slots, capacity)?,
            bufs: model.step_buffers(be, slots, stacked)?,
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
        let logits = self.model.prefill(self.be, &mut self.cache, prompts)?;
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        self.cache_long_rope = self.model.uses_long_rope(longest);
        if let Some(history) = &mut self.history {
            for (b, h) in history.iter_mut().enumerate() {
                *h = prompts.get(b).cloned().unwrap_or_default();
            }
        }
        Ok(logits)
    }

    /// LongRoPE, at the first step whose longest position passes the original length: every
    /// slot's tokens so far (this step's included) prefilled again, so that the whole cache is
    /// rotated with the long factors, as transformers' Phi-3 `generate` recomputes its cache
    /// there. The step's logits are the prefill's last-token ones.
    fn prefill_again_with_long_rope(&mut self) -> Result<()> {
        let history = self
            .history
            .as_ref()
            .expect("a LongRoPE decoder keeps its history");
        let logits = self.model.prefill(self.be, &mut self.cache, history)?;
        let len = self.be.len(&logits);
        self.be.copy(&mut self.bufs.logits, 0, &logits, 0, len)?;
        self.cache_long_rope = true;
        Ok(())
    }

    /// Records `tokens[b]` at `positions[b]` in each slot's history (LongRoPE models only).
    fn note_step(&mut self, tokens: &[u32], positions: &[u32]) -> Result<()> {
        let Some(history) = &mut self.history else {
            return Ok(());
        };
        for (b, (h, (&t, &p))) in history
            .iter_mut()
            .zip(tokens.iter().zip(positions))
            .enumerate()
        {
            let p = p as usize;
            ensure!(
                p <= h.len(),
                "decoder: slot {b} steps to position {p} after only {} tokens (a LongRoPE \
                 model's decoder needs each slot's positions without gaps)",
                h.len()
            );
            h.truncate(p);
            h.push(t);
        }
        Ok(())
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
        self.note_step(tokens, positions)?;
        if !self.cache_long_rope && model.uses_long_rope(step_len(positions)) {
            self.prefill_again_with_long_rope()?;
            self.steps += 1;
            return Ok(&self.bufs.logits);
        }
        // a recording holds one RoPE's buffers: the other one records again
        if self.recording.is_some() && self.recorded_long_rope != self.cache_long_rope {
            self.recording = None;
        }
        let rope = model.rope_long_or_not(self.cache_long_rope);
        let (cache, bufs) = (&mut self.cache, &mut self.bufs);
        if let Some(recording) = &self.recording {
            be.replay(recording)?;
        } else if self.may_record && self.steps > 0 {
            self.recording = be.record(&mut || model.decode_ops(be, cache, bufs, rope))?;
            self.may_record = self.recording.is_some();
            self.recorded_long_rope = self.cache_long_rope;
        } else {
            model.decode_ops(be, cache, bufs, rope)?;
        }
        self.steps += 1;
        Ok(&self.bufs.logits)
    }
}

/// A decode step's RoPE length: its longest position + 1 (transformers' `max(position_ids) + 1`).
fn step_len(positions: &[u32]) -> usize {
    positions.iter().max().map_or(0, |&p| p as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::parse_stacking;

    #[test]
    fn stacking_choice_and_bad_values() {
        assert!(parse_stacking(None, true).unwrap());
        assert!(!parse_stacking(None, false).unwrap());
        assert!(parse_stacking(Some("1"), false).unwrap());
        assert!(!parse_stacking(Some("0"), true).unwrap());
        for bad in ["yes", "off", "", "true"] {
            let e = parse_stacking(Some(bad), true).unwrap_err().to_string();
            assert!(
                e.contains("CADA_STACKED_DECODE") && e.contains("`0` or `1`"),
                "{e}"
            );
        }
    }
}
