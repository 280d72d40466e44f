//! The plain values the [`Backend`](super::Backend) ops take and return: the attention and
//! decode shapes, and the GRPO loss's knobs and metrics (re-exported from `backend`).

/// Shape of a causal self-attention call over a right-padded batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// sequences in the batch
    pub batch: usize,
    /// positions per sequence (the padded length)
    pub seq: usize,
    /// query heads
    pub n_heads: usize,
    /// key/value heads (GQA: `n_heads % n_kv_heads == 0`)
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// A model's RoPE as the ops take it: rotate-half over the first `rotary_dim` dims of each
/// head, pair `(i, i + rotary_dim/2)` turning by `position · inv_freq[i]`, the rotated dims
/// multiplied by `scale` (LongRoPE's attention factor, 1 otherwise) and the dims from
/// `rotary_dim` on passed through (a partial rotary, Phi-4-mini's). `inv_freq [rotary_dim/2]`
/// already includes any frequency scaling.
#[derive(Clone, Debug)]
pub struct Rope<Buf> {
    pub inv_freq: Buf,
    pub rotary_dim: usize,
    pub scale: f32,
}

impl<Buf> Rope<Buf> {
    /// The plain Llama RoPE: the whole head rotated, unscaled.
    pub fn whole_head(inv_freq: Buf, head_dim: usize) -> Self {
        Rope {
            inv_freq,
            rotary_dim: head_dim,
            scale: 1.0,
        }
    }
}

/// What Qwen3's q/k norm + RoPE ([`super::Backend::qk_norm_rope_forward`] and its backward)
/// reads: q and k as their projections wrote them (`q_raw [tokens, n_heads · head_dim]`,
/// `k_raw [tokens, n_kv_heads · head_dim]`), the norms' weights `[head_dim]`, one position per
/// token and the rotation.
pub struct QkNormRope<'a, Buf, Ids> {
    pub q_raw: &'a Buf,
    pub k_raw: &'a Buf,
    pub q_norm: &'a Buf,
    pub k_norm: &'a Buf,
    pub positions: &'a Ids,
    pub rope: &'a Rope<Buf>,
    pub tokens: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Shape of a batched single-token decode step over a KV cache.
/// Cache layout per layer: `[slots, capacity, n_kv_heads · head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    /// sequences decoded in this step (row `b` uses cache slot `b`)
    pub batch: usize,
    /// positions reserved per slot in the cache
    pub capacity: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Aggregation of the per-token GRPO loss (../shared/CADA.md, step 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// mean over the tokens of each completion, then mean over completions
    Grpo,
    /// sum over all tokens / number of tokens in the batch (`bnpo` is the same)
    #[serde(alias = "bnpo")]
    Dapo,
    /// sum over all tokens / (completions × max completion length)
    DrGrpo,
}

/// Where the importance ratio ρ is taken (TRL's `importance_sampling_level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSampling {
    /// per token: `ρ_t = exp(logp_t − old_t)` (GRPO, DAPO)
    #[default]
    Token,
    /// per completion: `ρ_b = exp(mean over its unmasked tokens of (logp − old))`, the
    /// clipped surrogate taken once per completion and shared by its tokens (GSPO)
    Sequence,
}

/// What the centred rewards are divided by (group-relative advantages, ../shared/CADA.md
/// step 6; the choice of population std is explained in `cpu/grpo_advantages.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// the std of the prompt's own group
    #[default]
    Group,
    /// the std of the whole batch (centring still uses each group's mean)
    Batch,
    /// no division (Dr. GRPO): `A = r − mean(group)`
    None,
}

/// Which standard deviation scales the advantages (`cpu/grpo_advantages.rs` says why the
/// default is the population one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardStd {
    /// divide by n: the spread of the rewards observed
    #[default]
    Population,
    /// divide by n − 1, as TRL (`nanstd`, `torch.std`): a TRL run's advantages exactly
    Unbiased,
}

/// Batch-level reward statistics for the step log.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdvantageStats {
    /// share of groups whose rewards are all equal (they carry no learning signal)
    pub frac_reward_zero_std: f32,
    /// mean reward over the batch
    pub reward_mean: f32,
    /// population std of the rewards over the batch
    pub reward_std: f32,
}

/// Knobs of the clipped-ratio + k3-KL loss.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GrpoLossConfig {
    pub loss_type: LossType,
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    /// KL coefficient; 0 means no reference model (ref log-probs are ignored)
    pub beta: f32,
    /// `max completion length` for `dr_grpo`
    pub max_completion_len: usize,
    pub importance_sampling: ImportanceSampling,
    /// two-sided clipping (TRL's `delta`, INTELLECT-2): the unclipped ratio is capped at δ, so a
    /// negative-advantage token far above the trust region stops pushing; None = off
    pub delta: Option<f32>,
}

/// Metrics returned by the loss forward: means over unmasked tokens, except that with
/// sequence-level importance sampling (GSPO) the clip ratios are shares of completions, as TRL
/// logs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GrpoLossMetrics {
    pub loss: f32,
    pub kl_mean: f32,
    /// share of tokens where ρ < 1-ε_low and A < 0 (the clip is active, lower side)
    pub clip_ratio_low: f32,
    /// share of tokens where ρ > 1+ε_high and A > 0 (the clip is active, upper side)
    pub clip_ratio_high: f32,
    /// share of tokens where the clipped branch is the one taken (either side)
    pub clip_ratio_region: f32,
    pub tokens: f32,
}
