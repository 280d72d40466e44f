//! Group-relative advantages (../shared/CADA.md, step 6): the f32/f64 CPU reference and the
//! oracle for `grpo_advantages` in kernels/grpo_loss.cu.
//!
//! Rewards arrive as `[prompts × group_size]`, the G completions of one prompt adjacent.
//! `A_i = (r_i − mean(group)) / (std + eps)` where `std` depends on [`ScaleRewards`].
//!
//! **Which std.** By default the *population* standard deviation (divide by n, not n−1). TRL
//! uses the unbiased one (`nanstd`, as `torch.std`); `RewardStd::Unbiased` (`loss.reward_std =
//! "unbiased"`) gives TRL's advantages exactly. Population std is the default because it is
//! the spread of the rewards actually observed: with it the advantages of a group always have
//! unit (population) variance up to eps, whatever G is, and one reward yields std 0 instead of
//! the unbiased estimator's 0/0 (the unbiased std of a single value is taken as 0 here). For
//! G = 8 the two differ by a factor √(8/7) ≈ 1.069.
//!
//! **Zero-std groups.** A group whose rewards are all bitwise equal gets A = 0 exactly (not
//! a rounding residue of `r − mean`) and is counted in `frac_reward_zero_std`. Exact equality
//! is the test, not a tolerance: rewards are judge outputs, and equal verdicts give equal bits.
//!
//! Means and variances are accumulated in f64.

use crate::backend::{AdvantageStats, RewardStd, ScaleRewards};
use anyhow::{bail, ensure, Result};

/// Mean and std of `values`, in f64 (`values` is non-empty): the squared deviations' sum over
/// n (population) or n − 1 (unbiased; a single value's std is 0).
fn mean_and_std(values: &[f32], std: RewardStd) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&r| r as f64).sum::<f64>() / n;
    let squares = values
        .iter()
        .map(|&r| (r as f64 - mean).powi(2))
        .sum::<f64>();
    let dof = match std {
        RewardStd::Unbiased if values.len() > 1 => n - 1.0,
        _ => n,
    };
    (mean, (squares / dof).sqrt())
}

/// The shape and knob checks of [`group_advantages`], shared with the CUDA launcher (which
/// checks the rewards' values on the device): `n` rewards in groups of `group_size`, `eps`.
pub fn check_advantage_inputs(n: usize, group_size: usize, eps: f32) -> Result<()> {
    ensure!(group_size > 0, "group_advantages: `group_size` must be > 0");
    ensure!(n > 0, "group_advantages: no rewards");
    ensure!(
        n.is_multiple_of(group_size),
        "group_advantages: {n} rewards is not a multiple of `group_size` {group_size}"
    );
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("group_advantages: `eps` = {eps} must be finite and ≥ 0");
    }
    Ok(())
}

/// One advantage per reward, plus the batch statistics. Errors on an empty batch,
/// `group_size == 0`, a length that is not a multiple of `group_size`, a non-finite reward
/// (naming its index) or a negative / non-finite `eps`.
pub fn group_advantages(
    rewards: &[f32],
    group_size: usize,
    scale: ScaleRewards,
    std: RewardStd,
    eps: f32,
) -> Result<(Vec<f32>, AdvantageStats)> {
    check_advantage_inputs(rewards.len(), group_size, eps)?;
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        bail!(
            "group_advantages: reward {i} is {} (not finite)",
            rewards[i]
        );
    }

    let (batch_mean, batch_std) = mean_and_std(rewards, std);
    let groups = rewards.len() / group_size;
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut zero_std_groups = 0usize;
    for group in rewards.chunks_exact(group_size) {
        let all_equal = group.iter().all(|&r| r == group[0]);
        if all_equal {
            zero_std_groups += 1;
            advantages.extend(std::iter::repeat_n(0.0f32, group_size));
            continue;
        }
        let (mean, group_std) = mean_and_std(group, std);
        let divisor = match scale {
            ScaleRewards::Group => group_std + eps as f64,
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

#[cfg(test)]
mod tests {
    //! Hand-computed examples (population std, see the module doc).
    use super::*;

    fn assert_close(what: &str, got: f64, want: f64, abs: f64) {
        assert!(
            (got - want).abs() <= abs,
            "{what}: got {got}, want {want} (tolerance {abs})"
        );
    }

    fn assert_all_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert_close(&format!("{what}[{i}]"), g as f64, w, tol);
        }
    }

    #[test]
    fn group_scaling_uses_population_std_plus_eps() {
        // [1, 0]: mean 0.5, population std 0.5 → ±0.5 / (0.5 + eps).
        let (a, _) = group_advantages(
            &[1.0, 0.0],
            2,
            ScaleRewards::Group,
            RewardStd::Population,
            0.0,
        )
        .unwrap();
        assert_all_close("eps 0", &a, &[1.0, -1.0], 1e-7);
        let (a, _) = group_advantages(
            &[1.0, 0.0],
            2,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4,
        )
        .unwrap();
        assert_all_close("eps 1e-4", &a, &[0.5 / 0.5001, -0.5 / 0.5001], 1e-7);
        // [1, 0, 0, 0]: mean 0.25, population variance (0.75² + 3·0.25²)/4 = 0.1875.
        let std = 0.1875f64.sqrt();
        let (a, stats) = group_advantages(
            &[1.0, 0.0, 0.0, 0.0, -1.0, 1.0, -1.0, 1.0],
            4,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4,
        )
        .unwrap();
        let hi = 0.75 / (std + 1e-4);
        let lo = -0.25 / (std + 1e-4);
        let unit = 1.0 / (1.0 + 1e-4); // second group: mean 0, population std 1
        assert_all_close("G=4", &a, &[hi, lo, lo, lo, -unit, unit, -unit, unit], 1e-6);
        assert_eq!(stats.frac_reward_zero_std, 0.0);
        assert_close("reward_mean", stats.reward_mean as f64, 0.125, 1e-7);
        // Batch population std, written out from the eight rewards about their mean 0.125.
        let values = [1.0, 0.0, 0.0, 0.0, -1.0, 1.0, -1.0, 1.0f64];
        let var = values.iter().map(|v| (v - 0.125).powi(2)).sum::<f64>() / 8.0;
        assert_close("reward_std", stats.reward_std as f64, var.sqrt(), 1e-6);
    }

    #[test]
    fn batch_scaling_centres_per_group_and_divides_by_batch_std() {
        // Groups [1, 0] and [3, 3]; batch mean 1.75, population variance 6.75/4 = 1.6875.
        let (a, stats) = group_advantages(
            &[1.0, 0.0, 3.0, 3.0],
            2,
            ScaleRewards::Batch,
            RewardStd::Population,
            1e-4,
        )
        .unwrap();
        let batch_std = 1.6875f64.sqrt();
        assert_all_close(
            "batch",
            &a,
            &[
                0.5 / (batch_std + 1e-4),
                -0.5 / (batch_std + 1e-4),
                0.0,
                0.0,
            ],
            1e-6,
        );
        assert_eq!(stats.frac_reward_zero_std, 0.5);
        assert_close("reward_std", stats.reward_std as f64, batch_std, 1e-6);
    }

    #[test]
    fn no_scaling_only_centres() {
        let (a, _) = group_advantages(
            &[2.0, 0.0, 1.0, 5.0, -1.0, 2.0],
            3,
            ScaleRewards::None,
            RewardStd::Population,
            1e-4,
        )
        .unwrap();
        assert_all_close("none", &a, &[1.0, -1.0, 0.0, 3.0, -3.0, 0.0], 1e-6);
    }

    #[test]
    fn zero_std_groups_get_exact_zeros_and_are_counted() {
        // 0.1 is not exact in binary: r − mean could leave a residue; A must still be 0 exactly.
        let rewards = [
            0.1f32, 0.1, 0.1, 1.0, 0.0, 1.0, -0.3, -0.3, -0.3, 7.0, 7.0, 7.0,
        ];
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            let (a, stats) =
                group_advantages(&rewards, 3, scale, RewardStd::Population, 1e-4).unwrap();
            for i in (0..3).chain(6..12) {
                assert_eq!(a[i].to_bits(), 0.0f32.to_bits(), "{scale:?}: advantage {i}");
            }
            assert!(
                a[3] > 0.0 && a[4] < 0.0,
                "{scale:?}: the mixed group keeps its signal"
            );
            assert_eq!(
                stats.frac_reward_zero_std, 0.75,
                "{scale:?}: 3 of 4 groups have zero std"
            );
        }
        // G = 1: each group is trivially all-equal (population std 0, no 0/0).
        let (a, stats) = group_advantages(
            &[1.0, -1.0],
            1,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4,
        )
        .unwrap();
        assert_eq!(a, vec![0.0, 0.0]);
        assert_eq!(stats.frac_reward_zero_std, 1.0);
    }

    #[test]
    fn advantage_errors_name_the_problem() {
        let message = |r: anyhow::Result<(Vec<f32>, _)>| format!("{:#}", r.unwrap_err());
        assert!(message(group_advantages(
            &[1.0, 2.0],
            0,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4
        ))
        .contains("group_size"));
        assert!(message(group_advantages(
            &[1.0, 2.0, 3.0],
            2,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4
        ))
        .contains("multiple"));
        assert!(message(group_advantages(
            &[],
            2,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4
        ))
        .contains("no rewards"));
        assert!(message(group_advantages(
            &[1.0, f32::NAN],
            2,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4
        ))
        .contains("reward 1"));
        assert!(message(group_advantages(
            &[1.0, 0.0],
            2,
            ScaleRewards::Group,
            RewardStd::Population,
            -1.0
        ))
        .contains("eps"));
    }

    #[test]
    fn scale_rewards_parses_snake_case() {
        for (text, want) in [
            ("\"group\"", ScaleRewards::Group),
            ("\"batch\"", ScaleRewards::Batch),
            ("\"none\"", ScaleRewards::None),
        ] {
            assert_eq!(serde_json::from_str::<ScaleRewards>(text).unwrap(), want);
        }
        assert!(serde_json::from_str::<ScaleRewards>("\"Group\"").is_err());
    }
}
