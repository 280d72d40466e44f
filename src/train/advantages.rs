//! Group-relative advantages (../shared/CADA.md, step 6).
//!
//! Rewards arrive as `[prompts × group_size]`, the G completions of one prompt adjacent.
//! `A_i = (r_i − mean(group)) / (std + eps)` where `std` depends on [`ScaleRewards`].
//!
//! **Which std.** This engine uses the *population* standard deviation (divide by n, not n−1).
//! TRL uses the unbiased one (`torch.std`). Population std is chosen because it is the spread
//! of the rewards actually observed: with it the advantages of a group always have unit
//! (population) variance up to eps, whatever G is, and G = 1 yields std 0 (A = 0) instead of
//! the unbiased estimator's 0/0. For G = 8 the two differ by a factor √(8/7) ≈ 1.069.
//!
//! **Zero-std groups.** A group whose rewards are all bitwise equal gets A = 0 exactly (not
//! a rounding residue of `r − mean`) and is counted in `frac_reward_zero_std`. Exact equality
//! is the test, not a tolerance: rewards are judge outputs, and equal verdicts give equal bits.
//!
//! Means and variances are accumulated in f64.

use anyhow::{bail, ensure, Result};

/// What the centred rewards are divided by.
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

/// Mean and population std of `values`, in f64 (`values` is non-empty).
fn mean_and_population_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&r| r as f64).sum::<f64>() / n;
    let variance = values
        .iter()
        .map(|&r| (r as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, variance.sqrt())
}

/// One advantage per reward, plus the batch statistics. Errors on an empty batch,
/// `group_size == 0`, a length that is not a multiple of `group_size`, a non-finite reward
/// (naming its index) or a negative / non-finite `eps`.
pub fn group_advantages(
    rewards: &[f32],
    group_size: usize,
    scale: ScaleRewards,
    eps: f32,
) -> Result<(Vec<f32>, AdvantageStats)> {
    ensure!(group_size > 0, "group_advantages: `group_size` must be > 0");
    ensure!(!rewards.is_empty(), "group_advantages: no rewards");
    ensure!(
        rewards.len() % group_size == 0,
        "group_advantages: {} rewards is not a multiple of `group_size` {group_size}",
        rewards.len()
    );
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        bail!(
            "group_advantages: reward {i} is {} (not finite)",
            rewards[i]
        );
    }
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("group_advantages: `eps` = {eps} must be finite and ≥ 0");
    }

    let (batch_mean, batch_std) = mean_and_population_std(rewards);
    let groups = rewards.len() / group_size;
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut zero_std_groups = 0usize;
    for group in rewards.chunks_exact(group_size) {
        let all_equal = group.iter().all(|&r| r == group[0]);
        if all_equal {
            zero_std_groups += 1;
            advantages.extend(std::iter::repeat(0.0f32).take(group_size));
            continue;
        }
        let (mean, std) = mean_and_population_std(group);
        let divisor = match scale {
            ScaleRewards::Group => std + eps as f64,
            ScaleRewards::Batch => batch_std + eps as f64,
            ScaleRewards::None => 1.0,
        };
        // divisor > 0: a group with unequal rewards has std > 0, hence so does the batch.
        advantages.extend(group.iter().map(|&r| ((r as f64 - mean) / divisor) as f32));
    }
    let stats = AdvantageStats {
        frac_reward_zero_std: zero_std_groups as f32 / groups as f32,
        reward_mean: batch_mean as f32,
        reward_std: batch_std as f32,
    };
    Ok((advantages, stats))
}
