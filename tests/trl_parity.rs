//! Our GRPO loss (the CPU reference, `backend/cpu/grpo_loss.rs`, which the CUDA kernels are
//! tested against in tests/grpo_cuda.rs) against TRL's: tests/fixtures/trl_grpo_loss.json holds
//! what `GRPOTrainer._compute_loss` of TRL 1.16.0 itself computes in float64
//! (scripts/trl_grpo_loss_dump.py) on three right-padded batches, two with a fully masked
//! completion, for the grpo, dapo and dr_grpo aggregations, β ∈ {0, 0.04} and ε_high ∈
//! {0.2, 0.28}: the loss, d(loss)/d(logp) for every token and the logged KL and clip ratios.
//! Ours computes per token in f32 (sums in f64), so the bounds are f32 rounding of O(1) terms.
//! And the group-relative advantages with `reward_std = "unbiased"` against TRL's (its `nanstd`
//! and its advantage arithmetic, transcribed in the dump script since it runs only inside
//! generation), for the group, batch and none scalings.

use cada::backend::cpu::grpo_loss::{grpo_loss_backward, grpo_loss_forward};
use cada::backend::{GrpoLossConfig, ImportanceSampling, LossType};
use cada::train::advantages::{group_advantages, RewardStd, ScaleRewards};

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/trl_grpo_loss.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn grpo_loss_gradient_and_metrics_match_trl() {
    let f = fixture();
    let batches = f["batches"].as_array().unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(
        cases.len(),
        66,
        "3 batches × (3 losses × 2 β × (2 ε token-level + GSPO) + 3 losses with δ + GSPO with δ)"
    );
    let mut worst = (0f64, 0f64, 0f64); // loss, gradient, metrics
    let mut gspo_clipped = 0; // GSPO cases where TRL logs a clipped completion
    let mut delta_bites = 0; // two-sided clipping cases whose loss δ changes
    for c in cases {
        let x = &batches[c["batch"].as_u64().unwrap() as usize];
        let (b, t) = (
            x["batch"].as_u64().unwrap() as usize,
            x["len"].as_u64().unwrap() as usize,
        );
        let (logp, old, rf, mask, adv) = (
            f32s(&x["logp"]),
            f32s(&x["old_logp"]),
            f32s(&x["ref_logp"]),
            f32s(&x["mask"]),
            f32s(&x["advantages"]),
        );
        let cfg = GrpoLossConfig {
            loss_type: match c["loss_type"].as_str().unwrap() {
                "grpo" => LossType::Grpo,
                "dapo" => LossType::Dapo,
                "dr_grpo" => LossType::DrGrpo,
                other => panic!("loss type {other}"),
            },
            epsilon_low: c["epsilon_low"].as_f64().unwrap() as f32,
            epsilon_high: c["epsilon_high"].as_f64().unwrap() as f32,
            beta: c["beta"].as_f64().unwrap() as f32,
            max_completion_len: c["max_completion_length"].as_u64().unwrap() as usize,
            importance_sampling: match c["importance_sampling_level"].as_str().unwrap_or("token") {
                "token" => ImportanceSampling::Token,
                "sequence" => ImportanceSampling::Sequence,
                other => panic!("importance_sampling_level {other}"),
            },
            delta: c["delta"].as_f64().map(|d| d as f32),
        };
        let what = format!(
            "batch {} {:?} {:?} δ={:?} β={} ε_high={}",
            c["batch"],
            cfg.importance_sampling,
            cfg.loss_type,
            cfg.delta,
            cfg.beta,
            cfg.epsilon_high
        );
        let m = grpo_loss_forward(&logp, &old, &rf, &mask, &adv, b, t, &cfg);
        if cfg.delta.is_some() {
            let uncapped = GrpoLossConfig { delta: None, ..cfg };
            let m0 = grpo_loss_forward(&logp, &old, &rf, &mask, &adv, b, t, &uncapped);
            delta_bites += ((m0.loss - m.loss).abs() > 1e-6) as usize;
        }
        let mut dlogp = vec![f32::NAN; b * t];
        grpo_loss_backward(&mut dlogp, &logp, &old, &rf, &mask, &adv, b, t, &cfg);

        // the loss: f32 terms of size ~1 summed in f64
        let want = c["loss"].as_f64().unwrap();
        let err = (m.loss as f64 - want).abs() / want.abs().max(1e-3);
        assert!(
            err <= 1e-5,
            "{what}: loss {} vs TRL's {want} ({err:.1e})",
            m.loss
        );
        worst.0 = worst.0.max(err);

        // every token's gradient, masked ones (0 in TRL) included: ‖ours − TRL‖ / ‖TRL‖
        let g_want: Vec<f64> = c["dlogp"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            dlogp.iter().all(|g| g.is_finite()),
            "{what}: non-finite gradient"
        );
        let num: f64 = dlogp
            .iter()
            .zip(&g_want)
            .map(|(&g, &w)| (g as f64 - w).powi(2))
            .sum();
        let den: f64 = g_want.iter().map(|w| w * w).sum();
        let rel = (num / den.max(1e-300)).sqrt();
        assert!(
            rel <= 1e-5,
            "{what}: gradient differs from TRL's by {rel:.1e} (relative)"
        );
        for (i, (&g, &mk)) in dlogp.iter().zip(&mask).enumerate() {
            if mk == 0.0 {
                assert_eq!(g, 0.0, "{what}: masked token {i} got a gradient");
            }
        }
        worst.1 = worst.1.max(rel);

        // the metrics TRL logs: the masked means of the k3 KL and of the clip indicators (in
        // sequence mode the share of clipped completions, over all of them)
        if cfg.importance_sampling == ImportanceSampling::Sequence {
            gspo_clipped += (c["clip_ratio_region"].as_f64().unwrap() > 0.0) as usize;
        }
        for (name, ours, field) in [
            ("kl_mean", m.kl_mean, "kl_mean"),
            ("clip_ratio_low", m.clip_ratio_low, "clip_ratio_low"),
            ("clip_ratio_high", m.clip_ratio_high, "clip_ratio_high"),
            (
                "clip_ratio_region",
                m.clip_ratio_region,
                "clip_ratio_region",
            ),
        ] {
            let want = c[field].as_f64().unwrap();
            let err = (ours as f64 - want).abs();
            assert!(err <= 1e-6, "{what}: {name} {ours} vs TRL's {want}");
            worst.2 = worst.2.max(err);
        }
    }
    assert!(gspo_clipped >= 4, "too few GSPO cases clip a completion ({gspo_clipped}): the per-completion clip metrics go unchecked");
    assert!(
        delta_bites >= 6,
        "δ changes the loss in only {delta_bites} of its 12 cases"
    );
    println!(
        "66 TRL cases (21 GSPO, {gspo_clipped} of them clipping; 12 with δ, {delta_bites} of them capped): loss within {:.1e} (relative), gradient within {:.1e}, metrics within {:.1e}",
        worst.0, worst.1, worst.2
    );
}

#[test]
fn unbiased_advantages_match_trl_and_population_ones_differ() {
    let f = fixture();
    let cases = f["advantages"].as_array().unwrap();
    assert_eq!(cases.len(), 6, "2 reward sets × 3 scalings");
    let mut worst = 0f64;
    for c in cases {
        let g = c["group_size"].as_u64().unwrap() as usize;
        let rewards = f32s(&c["rewards"]);
        let want = f32s(&c["advantages"]);
        let name = c["scale_rewards"].as_str().unwrap();
        let scale = match name {
            "group" => ScaleRewards::Group,
            "batch" => ScaleRewards::Batch,
            "none" => ScaleRewards::None,
            other => panic!("scale_rewards {other}"),
        };
        let (ours, _) = group_advantages(&rewards, g, scale, RewardStd::Unbiased, 1e-4).unwrap();
        for (i, (&a, &w)) in ours.iter().zip(&want).enumerate() {
            let err = (a as f64 - w as f64).abs() / (w as f64).abs().max(1.0);
            assert!(
                err <= 1e-6,
                "G = {g}, {name}: advantage {i} is {a}, TRL's {w}"
            );
            worst = worst.max(err);
        }
        // the all-equal first group: exactly 0 in both
        assert!(ours[..g].iter().chain(&want[..g]).all(|&a| a == 0.0));
        // the default (population) std scales them by sqrt(n / (n − 1)) instead
        let (pop, _) = group_advantages(&rewards, g, scale, RewardStd::Population, 1e-4).unwrap();
        if scale != ScaleRewards::None {
            let (i, _) = want
                .iter()
                .enumerate()
                .find(|(_, w)| w.abs() > 0.1)
                .unwrap();
            let ratio = pop[i] as f64 / want[i] as f64;
            let n = if scale == ScaleRewards::Group {
                g
            } else {
                rewards.len()
            } as f64;
            assert!(
                (ratio - (n / (n - 1.0)).sqrt()).abs() < 1e-3,
                "G = {g}, {name}: ratio {ratio}"
            );
        } else {
            assert_eq!(pop, ours, "no scaling: the std does not enter");
        }
    }
    println!("6 TRL advantage cases (unbiased std): within {worst:.1e}");
}

/// `loss.reward_std` and `loss.importance_sampling_level` reach the trainer's config; a single reward's unbiased std is 0 (not 0/0).
#[test]
fn reward_std_is_a_config_knob_and_one_reward_is_not_nan() {
    let cfg =
        cada::cada::config::TrainConfig::load(None, &["loss.reward_std=unbiased".to_string()])
            .unwrap();
    assert_eq!(cfg.loss.reward_std, RewardStd::Unbiased);
    let gspo = cada::cada::config::TrainConfig::load(
        None,
        &["loss.importance_sampling_level=sequence".to_string()],
    )
    .unwrap();
    assert_eq!(
        gspo.loss.grpo(8).importance_sampling,
        ImportanceSampling::Sequence
    );
    let default = cada::cada::config::TrainConfig::load(None, &[]).unwrap();
    assert_eq!(default.loss.reward_std, RewardStd::Population);
    let bad = cada::cada::config::TrainConfig::load(None, &["loss.reward_std=sample".to_string()]);
    assert!(bad.is_err(), "an unknown std is refused");
    let (a, stats) =
        group_advantages(&[0.5], 1, ScaleRewards::Batch, RewardStd::Unbiased, 1e-4).unwrap();
    assert_eq!((a, stats.reward_std), (vec![0.0], 0.0));
}

/// The fused log-prob head (CPU reference, vocabulary streamed in chunks with an online
/// log-sum-exp) against TRL's `selective_log_softmax` and `entropy_from_logits` on
/// `hidden @ lm_headᵀ / T`, and its backward against torch's autograd of Σ c·logp.
#[test]
fn fused_logprob_matches_trl_logps_entropies_and_gradients() {
    use cada::backend::cpu::Cpu;
    use cada::backend::Backend;
    let f = fixture();
    let cases = f["logprob"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    let cpu = Cpu::new();
    let rel = |got: &[f32], want: &[f32]| {
        let num: f64 = got
            .iter()
            .zip(want)
            .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
        (num / den.max(1e-300)).sqrt()
    };
    for c in cases {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (n, dim, vocab) = (u("n"), u("dim"), u("vocab"));
        let t = c["temperature"].as_f64().unwrap() as f32;
        let (hidden, w, dlogp) = (f32s(&c["hidden"]), f32s(&c["w"]), f32s(&c["dlogp"]));
        let targets: Vec<u32> = c["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (mut logp, mut entropy, mut lse) =
            (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
        cpu.fused_logprob_forward(
            &mut logp,
            &mut entropy,
            &mut lse,
            &hidden,
            &w,
            &targets,
            n,
            dim,
            vocab,
            t,
        )
        .unwrap();
        let (mut dh, mut dw) = (vec![f32::NAN; n * dim], vec![0.0; vocab * dim]);
        cpu.fused_logprob_backward(
            &mut dh, &mut dw, &dlogp, &hidden, &w, &targets, &lse, n, dim, vocab, t,
        )
        .unwrap();
        // f32 logits of a 16-term dot product against float64: ~1e-7 relative
        for (what, got, want, tol) in [
            ("logp", &logp, f32s(&c["logp"]), 1e-6),
            ("entropy", &entropy, f32s(&c["entropy"]), 1e-6),
            ("d(hidden)", &dh, f32s(&c["dhidden"]), 1e-5),
            ("d(lm_head)", &dw, f32s(&c["dw"]), 1e-5),
        ] {
            let e = rel(got, &want);
            assert!(
                e <= tol,
                "T = {t}: {what} differs from TRL's by {e:.1e} (bound {tol:.0e})"
            );
            println!("T = {t}, {n} × {vocab}: {what} within {e:.1e} of TRL's");
        }
    }
}
