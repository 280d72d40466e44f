//! The shapes every kernel is timed at: the one list that `cada bench kernels` runs and that
//! the PyTorch peer script reads (`cada bench shapes --set full > shapes.json`), so both sides
//! time exactly the same problems under the same ids.
//!
//! `full`: the shapes of ../shared/TARGETS.md (16k-token attention batches at head dims 64
//! and 128, the log-prob head at SmolLM2/Qwen2.5 widths, the GRPO loss at 64×1k and
//! 1k×16k, and the memory-bound layer ops at Qwen2.5-0.5B widths). `smoke`: the same ops at
//! sizes a CPU finishes in seconds (CI runs it end to end).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeSet {
    Full,
    Smoke,
}

impl ShapeSet {
    pub fn name(self) -> &'static str {
        match self {
            ShapeSet::Full => "full",
            ShapeSet::Smoke => "smoke",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LogprobShape {
    pub tokens: usize,
    pub hidden: usize,
    pub vocab: usize,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LossShape {
    pub batch: usize,
    pub len: usize,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct RowShape {
    pub rows: usize,
    pub dim: usize,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct DecodeShapeB {
    pub batch: usize,
    /// positions already in the cache (every sequence attends to `context` keys)
    pub context: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct SampleShape {
    pub batch: usize,
    pub vocab: usize,
}

/// Every shape of one set, grouped by op (serialised for the peer script).
#[derive(Clone, Debug, Serialize)]
pub struct Shapes {
    pub set: ShapeSet,
    pub attention: Vec<(String, AttentionShape)>,
    pub fused_logprob: Vec<(String, LogprobShape)>,
    pub grpo_loss: Vec<(String, LossShape)>,
    /// lm_head + log-prob + GRPO loss, forward and backward
    pub logprob_grpo: Vec<(String, LossShape, LogprobShape)>,
    pub rmsnorm: Vec<(String, RowShape)>,
    pub swiglu: Vec<(String, RowShape)>,
    pub rope: Vec<(String, AttentionShape)>,
    pub adamw: Vec<(String, usize)>,
    pub decode_attention: Vec<(String, DecodeShapeB)>,
    pub sample: Vec<(String, SampleShape)>,
}

fn attention_id(s: &AttentionShape) -> String {
    format!(
        "hd{}/gqa{}-{}/T{}/B{}",
        s.head_dim, s.n_heads, s.n_kv_heads, s.seq, s.batch
    )
}

pub fn shapes(set: ShapeSet) -> Shapes {
    let att = |batch, seq, n_heads, n_kv_heads, head_dim| AttentionShape {
        batch,
        seq,
        n_heads,
        n_kv_heads,
        head_dim,
    };
    let lp = |tokens, hidden, vocab| LogprobShape {
        tokens,
        hidden,
        vocab,
    };
    let (attention, logprob, loss, combo, rows, params, decode, sample) = match set {
        ShapeSet::Full => {
            let mut a = Vec::new();
            // 16k tokens per batch (batch × seq), as the SDPA peers in TARGETS.md
            for seq in [512, 1024, 2048, 4096, 8192] {
                let b = 16384 / seq;
                a.push(att(b, seq, 9, 3, 64)); // SmolLM2-135M
                a.push(att(b, seq, 14, 2, 64)); // Qwen2.5-0.5B
                a.push(att(b, seq, 32, 8, 128)); // Llama-3-8B-like
            }
            let mut l = Vec::new();
            for tokens in [4096, 16384] {
                l.push(lp(tokens, 576, 49152));
                l.push(lp(tokens, 896, 151936));
                l.push(lp(tokens, 2048, 151936));
            }
            l.push(lp(65536, 896, 151936));
            (
                a,
                l,
                vec![
                    LossShape {
                        batch: 64,
                        len: 1024,
                    },
                    LossShape {
                        batch: 1024,
                        len: 16384,
                    },
                ],
                vec![(
                    LossShape {
                        batch: 64,
                        len: 512,
                    },
                    lp(64 * 512, 896, 151936),
                )],
                vec![
                    RowShape {
                        rows: 16384,
                        dim: 896,
                    },
                    RowShape {
                        rows: 16384,
                        dim: 4864,
                    },
                ],
                vec![134_515_008, 494_032_768],
                vec![
                    DecodeShapeB {
                        batch: 64,
                        context: 384,
                        n_heads: 9,
                        n_kv_heads: 3,
                        head_dim: 64,
                    },
                    DecodeShapeB {
                        batch: 64,
                        context: 384,
                        n_heads: 14,
                        n_kv_heads: 2,
                        head_dim: 64,
                    },
                    // `cada generate` (one sequence) and a short batch at long context: a
                    // block per (head, sequence) leaves most SMs idle, split-KV's case
                    DecodeShapeB {
                        batch: 1,
                        context: 2048,
                        n_heads: 9,
                        n_kv_heads: 3,
                        head_dim: 64,
                    },
                    DecodeShapeB {
                        batch: 8,
                        context: 4096,
                        n_heads: 14,
                        n_kv_heads: 2,
                        head_dim: 64,
                    },
                ],
                vec![
                    SampleShape {
                        batch: 64,
                        vocab: 49152,
                    },
                    SampleShape {
                        batch: 64,
                        vocab: 151936,
                    },
                ],
            )
        }
        ShapeSet::Smoke => (
            vec![att(2, 64, 4, 2, 64), att(1, 48, 2, 1, 128)],
            vec![lp(64, 64, 1000)],
            vec![LossShape { batch: 8, len: 64 }],
            vec![(LossShape { batch: 4, len: 16 }, lp(64, 64, 1000))],
            vec![RowShape { rows: 64, dim: 256 }],
            vec![100_000],
            vec![DecodeShapeB {
                batch: 4,
                context: 40,
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 64,
            }],
            vec![SampleShape {
                batch: 4,
                vocab: 1000,
            }],
        ),
    };
    let rows_id = |r: &RowShape| format!("{}x{}", r.rows, r.dim);
    Shapes {
        set,
        attention: attention.iter().map(|s| (attention_id(s), *s)).collect(),
        fused_logprob: logprob
            .iter()
            .map(|s| (format!("N{}/D{}/V{}", s.tokens, s.hidden, s.vocab), *s))
            .collect(),
        grpo_loss: loss
            .iter()
            .map(|s| (format!("{}x{}", s.batch, s.len), *s))
            .collect(),
        logprob_grpo: combo
            .iter()
            .map(|(l, h)| {
                (
                    format!("{}x{}/D{}/V{}", l.batch, l.len, h.hidden, h.vocab),
                    *l,
                    *h,
                )
            })
            .collect(),
        rmsnorm: rows.iter().take(1).map(|r| (rows_id(r), *r)).collect(),
        swiglu: rows
            .iter()
            .rev()
            .take(1)
            .map(|r| (rows_id(r), *r))
            .collect(),
        rope: attention
            .iter()
            .take(1)
            .map(|s| (attention_id(s), *s))
            .collect(),
        adamw: params.iter().map(|&p| (format!("P{p}"), p)).collect(),
        decode_attention: decode
            .iter()
            .map(|d| {
                (
                    format!(
                        "hd{}/gqa{}-{}/ctx{}/B{}",
                        d.head_dim, d.n_heads, d.n_kv_heads, d.context, d.batch
                    ),
                    *d,
                )
            })
            .collect(),
        sample: sample
            .iter()
            .map(|s| (format!("B{}/V{}", s.batch, s.vocab), *s))
            .collect(),
    }
}

/// Causal attention FLOPs of the forward: two GEMMs (QKᵀ and PV) of 2·T²·hd each per head,
/// halved by the causal mask. The backward is counted as 2.5× the forward (five GEMMs
/// instead of two), the convention FlashAttention's and PyTorch's benchmarks use.
pub fn attention_forward_flops(s: &AttentionShape) -> f64 {
    4.0 * s.batch as f64 * s.n_heads as f64 * (s.seq as f64).powi(2) * s.head_dim as f64 / 2.0
}

/// Log-prob head FLOPs counted as the model's (6·N·D·V for forward + backward, 2·N·D·V for
/// the forward): the backward's recomputation of the chunk logits is overhead, not work.
pub fn logprob_flops(s: &LogprobShape, backward: bool) -> f64 {
    let f = 2.0 * s.tokens as f64 * s.hidden as f64 * s.vocab as f64;
    if backward {
        3.0 * f
    } else {
        f
    }
}
