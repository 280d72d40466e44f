//! The CUDA backend's choices of kernel and precision, read once from `CADA_*` environment
//! variables when a `Cuda` is created (the GEMM precision's lives in gemm.rs beside its modes),
//! and the list of the non-default ones that names a benchmark record's variant.

use super::{Cuda, GemmPrecision};
use anyhow::{anyhow, Result};

/// Which kernels run the training attention (`attention_forward` / `attention_backward`).
/// Both write the same `lse` layout, so a forward from one and a backward from the other agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// kernels/attention.cu: f32 on CUDA cores (tracks the CPU to ~1e-5)
    Simt,
    /// kernels/attention_mma.cu: bf16 tensor cores, f32 accumulation (~1e-2 relative)
    Mma,
    /// kernels/attention_wgmma.cu: Hopper's warpgroup MMA (compute capability 9.0 only), bf16
    /// operands, f32 accumulation (the mma kernels' bounds)
    Wgmma,
}

impl AttentionKernel {
    /// `CADA_ATTENTION` = `simt` | `mma` | `wgmma`; unset means `simt`, since none has yet run on a GPU
    /// and the f32 kernel is the one that matches the CPU to f32 rounding.
    pub fn from_env() -> Result<AttentionKernel> {
        match std::env::var("CADA_ATTENTION") {
            Err(std::env::VarError::NotPresent) => AttentionKernel::parse(None),
            Ok(v) => AttentionKernel::parse(Some(&v)),
            Err(e) => Err(anyhow!("cuda backend: CADA_ATTENTION: {e}")),
        }
    }

    /// The value of `CADA_ATTENTION`, if set.
    pub fn parse(value: Option<&str>) -> Result<AttentionKernel> {
        match value {
            None | Some("simt") => Ok(AttentionKernel::Simt),
            Some("mma") => Ok(AttentionKernel::Mma),
            Some("wgmma") => Ok(AttentionKernel::Wgmma),
            Some(v) => Err(anyhow!(
                "cuda backend: CADA_ATTENTION={v:?}: expected `simt`, `mma` or `wgmma`"
            )),
        }
    }

    /// Whether its kernels read q, k, v (and dO) as bf16 copies.
    pub fn reads_bf16(self) -> bool {
        matches!(self, AttentionKernel::Mma | AttentionKernel::Wgmma)
    }
}

/// Which kernel runs the decode step's attention over the KV cache (`decode_attention`): the
/// first two in kernels/decode_attention.cu (grid: one block per query head and sequence), the
/// third in kernels/decode_attention_split.cu; all f32 math.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeAttentionKernel {
    /// `decode_attention_lane_per_key`: a lane scores a key, one warp max and sum per 32 keys
    LanePerKey,
    /// `decode_attention`: a warp scores a key (a shuffle reduction per key)
    WarpPerKey,
    /// `decode_attention_split_partials` + `decode_attention_merge_splits` ("flash-decoding"):
    /// a block serves every query head of a kv head's GQA group (each cached row read once per
    /// group) over a range of the keys, and a second launch merges the ranges, so a small batch
    /// still fills the GPU
    SplitKv,
}

impl DecodeAttentionKernel {
    /// `CADA_DECODE_ATTENTION` = `lane_per_key` | `warp_per_key` | `split_kv`; unset means
    /// `lane_per_key` (none has been timed on a GPU: `cada bench kernels` times all three).
    pub fn from_env() -> Result<DecodeAttentionKernel> {
        match std::env::var("CADA_DECODE_ATTENTION") {
            Err(std::env::VarError::NotPresent) => DecodeAttentionKernel::parse(None),
            Ok(v) => DecodeAttentionKernel::parse(Some(&v)),
            Err(e) => Err(anyhow!("cuda backend: CADA_DECODE_ATTENTION: {e}")),
        }
    }

    /// The value of `CADA_DECODE_ATTENTION`, if set.
    pub fn parse(value: Option<&str>) -> Result<DecodeAttentionKernel> {
        match value {
            None | Some("lane_per_key") => Ok(DecodeAttentionKernel::LanePerKey),
            Some("warp_per_key") => Ok(DecodeAttentionKernel::WarpPerKey),
            Some("split_kv") => Ok(DecodeAttentionKernel::SplitKv),
            Some(v) => Err(anyhow!(
                "cuda backend: CADA_DECODE_ATTENTION={v:?}: expected `lane_per_key`, \
                 `warp_per_key` or `split_kv`"
            )),
        }
    }

    /// The bench's variant label.
    pub fn label(self) -> &'static str {
        match self {
            DecodeAttentionKernel::LanePerKey => "lane_per_key",
            DecodeAttentionKernel::WarpPerKey => "warp_per_key",
            DecodeAttentionKernel::SplitKv => "split_kv",
        }
    }

    /// Whether it reads a bf16 KV cache (`CADA_KV_CACHE=bf16`).
    pub fn reads_bf16_cache(self) -> bool {
        self != DecodeAttentionKernel::WarpPerKey
    }
}

/// The element type of the decode KV cache (`Backend::keep_as_kv_cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheType {
    /// f32, the CPU reference's values to the bit
    F32,
    /// bf16 (RNE on the write, widened on every read): half the decode step's largest read;
    /// the lane-per-key and split-KV decode attentions read it
    Bf16,
}

impl KvCacheType {
    /// `CADA_KV_CACHE` = `f32` | `bf16`; unset means `f32` until a GPU run has measured the
    /// bf16 cache's speed and its effect on the rollouts.
    pub fn from_env() -> Result<KvCacheType> {
        match std::env::var("CADA_KV_CACHE") {
            Err(std::env::VarError::NotPresent) => KvCacheType::parse(None),
            Ok(v) => KvCacheType::parse(Some(&v)),
            Err(e) => Err(anyhow!("cuda backend: CADA_KV_CACHE: {e}")),
        }
    }

    /// The value of `CADA_KV_CACHE`, if set.
    pub fn parse(value: Option<&str>) -> Result<KvCacheType> {
        match value {
            None | Some("f32") => Ok(KvCacheType::F32),
            Some("bf16") => Ok(KvCacheType::Bf16),
            Some(v) => Err(anyhow!(
                "cuda backend: CADA_KV_CACHE={v:?}: expected `f32` or `bf16`"
            )),
        }
    }
}

impl Cuda {
    /// The non-default settings (`Backend::settings`): what a benchmark record timed.
    pub(super) fn non_default_settings(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if self.gemm_precision() != GemmPrecision::F32 {
            parts.push(self.gemm_precision().label().to_string());
        }
        match self.attention_kernel() {
            AttentionKernel::Simt => {}
            AttentionKernel::Mma => parts.push("mma attention".into()),
            AttentionKernel::Wgmma => parts.push("wgmma attention".into()),
        }
        if self.decode_attention_kernel() != DecodeAttentionKernel::LanePerKey {
            parts.push(format!(
                "{} decode attention",
                self.decode_attention_kernel().label()
            ));
        }
        if self.kv_cache_type() == KvCacheType::Bf16 {
            parts.push("bf16 kv cache".into());
        }
        if !self.graphs() {
            parts.push("no cuda graphs".into());
        }
        parts
    }
}
