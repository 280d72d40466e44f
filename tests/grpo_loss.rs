//! GRPO loss (CPU reference) against an independent, naive f64 transcription of
//! ../shared/CADA.md step 7, its backward against central finite differences, and the
//! all-equal-rewards case through the advantages (their own hand-computed tests live in
//! src/backend/cpu/grpo_advantages.rs; the GPU twins are checked in tests/grpo_cuda.rs).

use cada::backend::cpu::grpo_loss::{check_grpo_inputs, grpo_loss_backward, grpo_loss_forward};
use cada::backend::{GrpoLossConfig, GrpoLossMetrics, ImportanceSampling, LossType};
use cada::train::advantages::{group_advantages, RewardStd, ScaleRewards};

const LOSS_TYPES: [LossType; 3] = [LossType::Grpo, LossType::Dapo, LossType::DrGrpo];
const BETAS: [f32; 2] = [0.0, 0.04];
const EPSILONS: [(f32, f32); 2] = [(0.2, 0.2), (0.2, 0.28)];
const MAX_COMPLETION_LEN: usize = 8;

/// A right-padded batch of completions with per-token log-probs.
struct Batch {
    logp: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    mask: Vec<f32>,
    advantages: Vec<f32>,
    batch: usize,
    len: usize,
}

/// 6 completions × 6 positions. `logp − old_logp` is chosen per token to land inside the
/// clip range, below 1−ε_low (ln 0.8 = −0.223) or above 1+ε_high (ln 1.2 = 0.182,
/// ln 1.28 = 0.247; 0.21 sits between them), each at least 0.028 from a kink so finite
/// differences with h = 1e-2 never straddle one.
/// Row 2 is fully masked; rows 3 and 4 are a group whose rewards were all equal (A = 0).
fn fixture() -> Batch {
    let (batch, len) = (6, 6);
    let deltas: [[f32; 6]; 6] = [
        [0.40, -0.50, 0.05, 0.21, -0.10, 0.0], // A > 0: high clip active at 0.40 (and 0.21 for ε_high 0.2)
        [-0.60, 0.30, 0.0, -0.05, 0.21, 0.0],  // A < 0: low clip active at −0.60
        [0.50, -0.50, 0.1, 0.1, 0.1, 0.1],     // fully masked
        [0.30, -0.40, 0.02, 0.0, 0.0, 0.0],    // A = 0
        [-0.30, 0.35, 0.0, 0.0, 0.0, 0.0],     // A = 0
        [0.60, -0.35, -0.70, 0.15, -0.15, 0.08], // A < 0, no padding
    ];
    let lengths = [4usize, 5, 0, 3, 2, 6];
    let advantages = vec![1.2f32, -0.7, 0.5, 0.0, 0.0, -1.5];
    let mut logp = Vec::new();
    let mut old_logp = Vec::new();
    let mut ref_logp = Vec::new();
    let mut mask = Vec::new();
    for (b, row_deltas) in deltas.iter().enumerate() {
        for (t, delta) in row_deltas.iter().enumerate() {
            let old = -0.3 - 0.37 * ((b * len + t) % 7) as f32;
            let valid = t < lengths[b];
            // Padding holds garbage the loss must ignore (a positive "log-prob").
            logp.push(if valid { old + delta } else { 3.0 });
            old_logp.push(if valid { old } else { 2.5 });
            ref_logp.push(if valid {
                old - 0.25 + 0.11 * t as f32
            } else {
                1.5
            });
            mask.push(if valid { 1.0 } else { 0.0 });
        }
    }
    Batch {
        logp,
        old_logp,
        ref_logp,
        mask,
        advantages,
        batch,
        len,
    }
}

fn config(
    loss_type: LossType,
    beta: f32,
    (epsilon_low, epsilon_high): (f32, f32),
) -> GrpoLossConfig {
    GrpoLossConfig {
        loss_type,
        epsilon_low,
        epsilon_high,
        beta,
        max_completion_len: MAX_COMPLETION_LEN,
        importance_sampling: ImportanceSampling::Token,
        delta: None,
    }
}

fn forward(x: &Batch, cfg: &GrpoLossConfig) -> GrpoLossMetrics {
    grpo_loss_forward(
        &x.logp,
        &x.old_logp,
        &x.ref_logp,
        &x.mask,
        &x.advantages,
        x.batch,
        x.len,
        cfg,
    )
}

fn backward(x: &Batch, cfg: &GrpoLossConfig) -> Vec<f32> {
    // Pre-filled with junk: the backward must write every element, masked ones included.
    let mut dlogp = vec![7.0f32; x.batch * x.len];
    grpo_loss_backward(
        &mut dlogp,
        &x.logp,
        &x.old_logp,
        &x.ref_logp,
        &x.mask,
        &x.advantages,
        x.batch,
        x.len,
        cfg,
    );
    dlogp
}

/// CADA.md step 7, written out token by token in f64 with plain loops.
/// Returns (loss, kl_mean, clip_low, clip_high, clip_region, tokens).
fn naive_reference(x: &Batch, cfg: &GrpoLossConfig) -> [f64; 6] {
    let (eps_low, eps_high, beta) = (
        cfg.epsilon_low as f64,
        cfg.epsilon_high as f64,
        cfg.beta as f64,
    );
    let mut per_completion_means = 0.0;
    let mut total_sum = 0.0;
    let mut total_tokens = 0.0;
    let (mut kl_sum, mut low, mut high, mut region) = (0.0, 0.0, 0.0, 0.0);
    for b in 0..x.batch {
        let a = x.advantages[b] as f64;
        let mut completion_sum = 0.0;
        let mut completion_tokens = 0.0;
        for t in 0..x.len {
            let i = b * x.len + t;
            if x.mask[i] == 0.0 {
                continue;
            }
            let logp = x.logp[i] as f64;
            let ratio = (logp - x.old_logp[i] as f64).exp();
            let clipped_ratio = ratio.max(1.0 - eps_low).min(1.0 + eps_high);
            let mut token_loss = -(ratio * a).min(clipped_ratio * a);
            if beta != 0.0 {
                let d = x.ref_logp[i] as f64 - logp;
                let kl = d.exp() - d - 1.0;
                token_loss += beta * kl;
                kl_sum += kl;
            }
            let is_low = ratio < 1.0 - eps_low && a < 0.0;
            let is_high = ratio > 1.0 + eps_high && a > 0.0;
            low += is_low as u8 as f64;
            high += is_high as u8 as f64;
            region += (is_low || is_high) as u8 as f64;
            completion_sum += token_loss;
            completion_tokens += 1.0;
        }
        per_completion_means += completion_sum / f64::max(completion_tokens, 1.0);
        total_sum += completion_sum;
        total_tokens += completion_tokens;
    }
    let loss = match cfg.loss_type {
        LossType::Grpo => per_completion_means / x.batch as f64,
        LossType::Dapo => total_sum / f64::max(total_tokens, 1.0),
        LossType::DrGrpo => total_sum / (x.batch * cfg.max_completion_len) as f64,
    };
    let n = total_tokens;
    [
        loss,
        kl_sum / n,
        low / n,
        high / n,
        region / n,
        total_tokens,
    ]
}

fn assert_close(what: &str, got: f64, want: f64, abs: f64, rel: f64) {
    assert!(
        (got - want).abs() <= abs + rel * want.abs(),
        "{what}: got {got}, want {want} (tolerance {abs} + {rel}·|want|)"
    );
}

#[test]
fn forward_matches_naive_transcription_for_every_configuration() {
    let x = fixture();
    for loss_type in LOSS_TYPES {
        for beta in BETAS {
            for eps in EPSILONS {
                let cfg = config(loss_type, beta, eps);
                let got = forward(&x, &cfg);
                let want = naive_reference(&x, &cfg);
                let name = |field: &str| format!("{loss_type:?} β={beta} ε={eps:?} {field}");
                // f32 per-token math against f64: a few ulps of the O(1) terms.
                assert_close(&name("loss"), got.loss as f64, want[0], 1e-6, 1e-5);
                let kl_want = if beta == 0.0 { 0.0 } else { want[1] };
                assert_close(&name("kl_mean"), got.kl_mean as f64, kl_want, 1e-7, 1e-5);
                // Ratios of small integers: exact up to f32 rounding of the division.
                assert_close(
                    &name("clip_ratio_low"),
                    got.clip_ratio_low as f64,
                    want[2],
                    1e-7,
                    0.0,
                );
                assert_close(
                    &name("clip_ratio_high"),
                    got.clip_ratio_high as f64,
                    want[3],
                    1e-7,
                    0.0,
                );
                assert_close(
                    &name("clip_ratio_region"),
                    got.clip_ratio_region as f64,
                    want[4],
                    1e-7,
                    0.0,
                );
                assert_eq!(got.tokens, 20.0, "{}", name("tokens"));
                // The fixture must actually exercise both clip sides, or the check is hollow.
                assert!(
                    got.clip_ratio_low > 0.0 && got.clip_ratio_high > 0.0,
                    "{}",
                    name("clips hit")
                );
            }
        }
    }
    // ε_high 0.28 un-clips the 0.21 token of row 0: one fewer high clip out of 20 tokens.
    let narrow = forward(&x, &config(LossType::Grpo, 0.0, (0.2, 0.2)));
    let wide = forward(&x, &config(LossType::Grpo, 0.0, (0.2, 0.28)));
    assert_close(
        "high clips 0.2 vs 0.28",
        (narrow.clip_ratio_high - wide.clip_ratio_high) as f64,
        1.0 / 20.0,
        1e-7,
        0.0,
    );
}

#[test]
fn beta_zero_never_reads_reference_log_probs() {
    let mut x = fixture();
    x.ref_logp = vec![f32::NAN; x.ref_logp.len()];
    for loss_type in LOSS_TYPES {
        let cfg = config(loss_type, 0.0, (0.2, 0.28));
        let got = forward(&x, &cfg);
        assert!(
            got.loss.is_finite(),
            "{loss_type:?}: NaN reference leaked into the loss"
        );
        assert_eq!(got.kl_mean, 0.0);
        assert!(
            backward(&x, &cfg).iter().all(|g| g.is_finite()),
            "{loss_type:?}: NaN reference leaked into dlogp"
        );
        // An empty reference buffer is accepted too when β = 0.
        check_grpo_inputs("test", 36, 36, 0, 36, 6, 6, 6, &cfg).unwrap();
    }
}

#[test]
fn padding_values_never_leak_into_loss_or_gradient() {
    let mut x = fixture();
    for i in 0..x.mask.len() {
        if x.mask[i] == 0.0 {
            x.logp[i] = f32::NAN;
            x.old_logp[i] = f32::INFINITY;
            x.ref_logp[i] = f32::NAN;
        }
    }
    let clean = fixture();
    for loss_type in LOSS_TYPES {
        let cfg = config(loss_type, 0.04, (0.2, 0.2));
        assert_eq!(
            forward(&x, &cfg),
            forward(&clean, &cfg),
            "{loss_type:?}: padding changed the forward"
        );
        let grad = backward(&x, &cfg);
        assert_eq!(
            grad,
            backward(&clean, &cfg),
            "{loss_type:?}: padding changed the backward"
        );
        for (i, (&g, &m)) in grad.iter().zip(&x.mask).enumerate() {
            if m == 0.0 {
                assert_eq!(g, 0.0, "{loss_type:?}: masked token {i} got a gradient");
            }
        }
    }
}

#[test]
fn fully_masked_completion_counts_in_grpo_mean_but_adds_nothing() {
    // TRL's convention: per-sequence token count clamped to ≥ 1, divided by the number of
    // sequences. Dropping row 2 (fully masked) therefore rescales the grpo loss by 6/5.
    let x = fixture();
    let cfg = config(LossType::Grpo, 0.04, (0.2, 0.2));
    let with_row = forward(&x, &cfg).loss as f64;
    let keep: Vec<usize> = (0..x.batch).filter(|&b| b != 2).collect();
    let pick = |v: &Vec<f32>| {
        keep.iter()
            .flat_map(|&b| v[b * x.len..(b + 1) * x.len].to_vec())
            .collect::<Vec<_>>()
    };
    let without = Batch {
        logp: pick(&x.logp),
        old_logp: pick(&x.old_logp),
        ref_logp: pick(&x.ref_logp),
        mask: pick(&x.mask),
        advantages: keep.iter().map(|&b| x.advantages[b]).collect(),
        batch: 5,
        len: x.len,
    };
    let without_row = forward(&without, &cfg).loss as f64;
    assert_close(
        "grpo loss with empty row × 6/5",
        with_row * 6.0 / 5.0,
        without_row,
        1e-6,
        1e-5,
    );
    // An all-masked batch gives a zero loss and zero metrics, never NaN.
    let mut empty = fixture();
    empty.mask = vec![0.0; empty.mask.len()];
    for loss_type in LOSS_TYPES {
        let got = forward(&empty, &config(loss_type, 0.04, (0.2, 0.2)));
        assert_eq!(
            got,
            GrpoLossMetrics::default(),
            "{loss_type:?}: all-masked batch"
        );
    }
}

#[test]
fn backward_matches_central_finite_differences() {
    let x = fixture();
    let h = 1e-2f32;
    for loss_type in LOSS_TYPES {
        for beta in BETAS {
            for eps in EPSILONS {
                let cfg = config(loss_type, beta, eps);
                let grad = backward(&x, &cfg);
                let mut nonzero = 0;
                for (i, &g) in grad.iter().enumerate() {
                    if x.mask[i] == 0.0 {
                        assert_eq!(g, 0.0);
                        continue;
                    }
                    let mut plus = fixture();
                    plus.logp[i] += h;
                    let mut minus = fixture();
                    minus.logp[i] -= h;
                    let fd = (forward(&plus, &cfg).loss as f64 - forward(&minus, &cfg).loss as f64)
                        / (2.0 * h as f64);
                    // f32 loss rounding / 2h ≈ 3e-6, truncation h²/6·|f'''| ≈ 2e-5·|grad|.
                    let what = format!("{loss_type:?} β={beta} ε={eps:?} dlogp[{i}]");
                    assert_close(&what, g as f64, fd, 2e-5, 1e-3);
                    nonzero += (g != 0.0) as usize;
                }
                // Clipped tokens (and A = 0 with β = 0) have zero gradient, most others do not.
                assert!(
                    nonzero >= 8,
                    "{loss_type:?} β={beta}: only {nonzero} non-zero gradients"
                );
            }
        }
    }
}

#[test]
fn on_policy_ratio_is_one_but_gradient_is_minus_advantage_over_count() {
    // μ = 1: logp == old_logp, so ρ = 1 and the loss is −mean(A), yet dρ/dlogp = ρ = 1.
    let (batch, len) = (3, 4);
    let lengths = [4usize, 2, 3];
    let advantages = vec![0.8f32, -1.1, 0.9];
    let logp: Vec<f32> = (0..batch * len).map(|i| -0.2 - 0.13 * i as f32).collect();
    let mask: Vec<f32> = (0..batch * len)
        .map(|i| if i % len < lengths[i / len] { 1.0 } else { 0.0 })
        .collect();
    for eps in EPSILONS {
        let cfg = config(LossType::Grpo, 0.0, eps);
        let got = grpo_loss_forward(&logp, &logp, &[], &mask, &advantages, batch, len, &cfg);
        let want_loss = -(0.8 - 1.1 + 0.9) / 3.0;
        assert_close(
            "on-policy grpo loss",
            got.loss as f64,
            want_loss,
            1e-7,
            1e-6,
        );
        assert_eq!(got.clip_ratio_region, 0.0);
        let mut dlogp = vec![0.0f32; batch * len];
        grpo_loss_backward(
            &mut dlogp,
            &logp,
            &logp,
            &[],
            &mask,
            &advantages,
            batch,
            len,
            &cfg,
        );
        for (i, &g) in dlogp.iter().enumerate() {
            let (b, t) = (i / len, i % len);
            // −A / (count · batch): the per-completion mean, then the mean over completions.
            let want = if t < lengths[b] {
                -advantages[b] as f64 / (lengths[b] * batch) as f64
            } else {
                0.0
            };
            assert_close(&format!("on-policy dlogp[{i}]"), g as f64, want, 1e-9, 1e-6);
        }
    }
    // A single completion: exactly −A / count.
    let cfg = config(LossType::Grpo, 0.0, (0.2, 0.2));
    let mut dlogp = vec![0.0f32; 4];
    grpo_loss_backward(
        &mut dlogp,
        &logp[..4],
        &logp[..4],
        &[],
        &[1.0; 4],
        &[0.8],
        1,
        4,
        &cfg,
    );
    for g in dlogp {
        assert_close(
            "single-completion on-policy dlogp",
            g as f64,
            -0.8 / 4.0,
            1e-9,
            1e-6,
        );
    }
}

#[test]
fn all_equal_rewards_group_leaves_only_the_kl_term() {
    let (advantages, stats) = group_advantages(
        &[0.5, 0.5, 0.5],
        3,
        ScaleRewards::Group,
        RewardStd::Population,
        1e-4,
    )
    .unwrap();
    assert_eq!(
        advantages,
        vec![0.0; 3],
        "all-equal rewards must give A = 0 exactly"
    );
    assert_eq!(stats.frac_reward_zero_std, 1.0);
    let len = 3;
    let logp = vec![-1.0f32, -0.5, -2.0, -0.7, -1.3, -0.9, -0.2, -3.0, -1.1];
    let old: Vec<f32> = logp
        .iter()
        .enumerate()
        .map(|(i, l)| l + 0.3 * (i as f32 - 4.0))
        .collect();
    let reference: Vec<f32> = logp.iter().map(|l| l - 0.4).collect();
    let mask = vec![1.0f32; 9];
    for loss_type in LOSS_TYPES {
        let cfg = config(loss_type, 0.04, (0.2, 0.28));
        let got = grpo_loss_forward(&logp, &old, &reference, &mask, &advantages, 3, len, &cfg);
        // k3 with δ = ref − logp = −0.4 for every token: e^−0.4 + 0.4 − 1.
        let kl = (-0.4f64).exp() + 0.4 - 1.0;
        let divisor_per_token = match loss_type {
            LossType::Grpo | LossType::Dapo => 1.0,
            LossType::DrGrpo => MAX_COMPLETION_LEN as f64 / len as f64,
        };
        assert_close(
            &format!("{loss_type:?} loss"),
            got.loss as f64,
            0.04 * kl / divisor_per_token,
            1e-8,
            1e-5,
        );
        assert_close("kl_mean", got.kl_mean as f64, kl, 1e-8, 1e-5);
        let mut dlogp = vec![0.0f32; 9];
        grpo_loss_backward(
            &mut dlogp,
            &logp,
            &old,
            &reference,
            &mask,
            &advantages,
            3,
            len,
            &cfg,
        );
        let per_token_weight = 1.0 / (9.0 * divisor_per_token);
        for g in dlogp {
            // d(β·KL)/dlogp = β(1 − e^δ)
            assert_close(
                "KL-only dlogp",
                g as f64,
                0.04 * (1.0 - (-0.4f64).exp()) * per_token_weight,
                1e-9,
                1e-5,
            );
        }
    }
}

#[test]
fn bad_shapes_and_knobs_are_reported_by_name() {
    let ok = config(LossType::Grpo, 0.04, (0.2, 0.2));
    check_grpo_inputs("t", 12, 12, 12, 12, 3, 3, 4, &ok).unwrap();
    let message = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());
    assert!(message(check_grpo_inputs("t", 11, 12, 12, 12, 3, 3, 4, &ok)).contains("`logp`"));
    assert!(message(check_grpo_inputs("t", 12, 12, 12, 13, 3, 3, 4, &ok)).contains("`mask`"));
    assert!(message(check_grpo_inputs("t", 12, 12, 0, 12, 3, 3, 4, &ok)).contains("`ref_logp`"));
    assert!(message(check_grpo_inputs("t", 12, 12, 12, 12, 2, 3, 4, &ok)).contains("`advantages`"));
    let dr = GrpoLossConfig {
        loss_type: LossType::DrGrpo,
        max_completion_len: 0,
        ..ok
    };
    assert!(
        message(check_grpo_inputs("t", 12, 12, 12, 12, 3, 3, 4, &dr))
            .contains("max_completion_len")
    );
    let negative = GrpoLossConfig {
        epsilon_high: -0.1,
        ..ok
    };
    assert!(
        message(check_grpo_inputs("t", 12, 12, 12, 12, 3, 3, 4, &negative))
            .contains("epsilon_high")
    );
    let nan_beta = GrpoLossConfig {
        beta: f32::NAN,
        ..ok
    };
    assert!(message(check_grpo_inputs("t", 12, 12, 12, 12, 3, 3, 4, &nan_beta)).contains("beta"));
}

/// The fused op's own inputs: a non-finite `grad_scale` and a short `dlogp` are refused by name,
/// and its shape checks name the op.
#[test]
fn fused_pass_reports_bad_inputs_by_name() {
    use cada::backend::cpu::Cpu;
    use cada::backend::Backend;
    let cpu = Cpu::new();
    let cfg = config(LossType::Dapo, 0.04, (0.2, 0.28));
    let v = vec![-1.0f32; 12];
    let adv = vec![0.5f32; 3];
    let message = |r: anyhow::Result<GrpoLossMetrics>| format!("{:#}", r.unwrap_err());
    let mut d = vec![0.0f32; 12];
    assert!(cpu
        .grpo_loss_fused(&mut d, &v, &v, &v, &v, &adv, 3, 4, &cfg, 1.0)
        .is_ok());
    let m = message(cpu.grpo_loss_fused(&mut d, &v, &v, &v, &v, &adv, 3, 4, &cfg, f32::NAN));
    assert!(m.contains("grad_scale"), "{m}");
    let mut short = vec![0.0f32; 11];
    let m = message(cpu.grpo_loss_fused(&mut short, &v, &v, &v, &v, &adv, 3, 4, &cfg, 1.0));
    assert!(m.contains("dlogp"), "{m}");
    let m =
        message(cpu.grpo_loss_fused(&mut d, &v[..11].to_vec(), &v, &v, &v, &adv, 3, 4, &cfg, 1.0));
    assert!(m.contains("`logp`"), "{m}");
}
