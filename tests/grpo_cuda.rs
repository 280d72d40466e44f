//! The GRPO ops on the GPU against the CPU reference: the loss forward and backward, the fused
//! pass the trainer uses (forward + backward + the micro-batch scale, metrics reduced on the
//! device), and the group-relative advantages. Fresh random inputs each run (the seed is
//! printed), outputs poisoned with NaN before each launch; error ‖gpu − cpu‖ / ‖cpu‖.
//!
//! Bounds: every value is a per-token f32 expression summed in f64, so the GPU differs from the
//! CPU only by f32 `expf` rounding (≤ 2 ulp in CUDA's libdevice) and f64 reassociation: 1e-5.
//! The advantages are f64 throughout except the batch mean/std reduction order: 1e-6.
//!
//! Without the `cuda` feature, or without a GPU, each test prints "skipped: no GPU" and returns.
//! `cpu_twin_bodies_run` runs the same bodies with the CPU as the device under test, so the
//! comparison code itself is exercised in CI.
#![allow(clippy::too_many_arguments)]

#[macro_use]
mod common;

use common::{check, down, poisoned, randv};

use cada::backend::cpu::Cpu;
use cada::backend::{
    Backend, GrpoLossConfig, GrpoLossMetrics, ImportanceSampling, LossType, RewardStd, ScaleRewards,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

type Rand = ChaCha8Rng;

/// per-token f32 terms summed in f64 (see the header)
const LOSS_TOL: f64 = 1e-5;
/// f64 advantages cast to f32 (see the header)
const ADV_TOL: f64 = 1e-6;

/// Token grids of `batch` right-padded completions of up to `len` tokens; one row may be fully
/// masked. Log-prob ratios spread over ±0.4 so both clip sides are hit.
struct Grids {
    logp: Vec<f32>,
    old: Vec<f32>,
    reference: Vec<f32>,
    mask: Vec<f32>,
    adv: Vec<f32>,
    batch: usize,
    len: usize,
}

fn grids(r: &mut Rand, batch: usize, len: usize) -> Grids {
    // ln(1 − ε_low), ln(1 + ε_high): a ratio within f32 `expf` rounding of a clip bound could
    // take a different branch on the two devices (a 0 vs −ρA gradient), so none is drawn there
    let bounds = [0.8f32.ln(), 1.28f32.ln()];
    let logp: Vec<f32> = randv(r, batch * len, 1.0).iter().map(|x| x - 2.0).collect();
    let old: Vec<f32> = logp
        .iter()
        .map(|x| loop {
            let delta: f32 = r.gen_range(-0.4..0.4);
            if bounds.iter().all(|b| (delta - b).abs() > 1e-4) {
                break x - delta;
            }
        })
        .collect();
    let reference: Vec<f32> = logp.iter().map(|x| x + r.gen_range(-0.3..0.3)).collect();
    let mut mask = vec![0f32; batch * len];
    for b in 0..batch {
        // row 0 fully masked (it still counts in grpo's 1/B), row 1 full, the rest random
        let keep = match b {
            0 => 0,
            1 => len,
            _ => r.gen_range(0..=len),
        };
        mask[b * len..b * len + keep]
            .iter_mut()
            .for_each(|m| *m = 1.0);
    }
    // padding log-probs are garbage in a real batch: NaN here, so a kernel that reads one
    // into a sum (even times a zero mask) fails
    let nan_where_masked = |v: Vec<f32>| -> Vec<f32> {
        v.iter()
            .zip(&mask)
            .map(|(&x, &m)| if m == 0.0 { f32::NAN } else { x })
            .collect()
    };
    let (logp, old, reference) = (
        nan_where_masked(logp),
        nan_where_masked(old),
        nan_where_masked(reference),
    );
    let adv = randv(r, batch, 1.5);
    Grids {
        logp,
        old,
        reference,
        mask,
        adv,
        batch,
        len,
    }
}

/// Each metric on its own (one norm over all six would let the token count, ~10⁵, swamp the
/// loss and ratios): the count exactly, the others within `LOSS_TOL · max(|cpu|, 1e-3)`.
fn check_metrics(what: &str, gpu: &GrpoLossMetrics, cpu: &GrpoLossMetrics) {
    assert_eq!(gpu.tokens, cpu.tokens, "{what}: token count");
    let names = [
        "loss",
        "kl_mean",
        "clip_ratio_low",
        "clip_ratio_high",
        "clip_ratio_region",
    ];
    for ((name, g), c) in names.iter().zip(metrics_vec(gpu)).zip(metrics_vec(cpu)) {
        let bound = LOSS_TOL * (c.abs() as f64).max(1e-3);
        let err = (g as f64 - c as f64).abs();
        println!("  {what} {name}: gpu {g:.7e} cpu {c:.7e} (|diff| {err:.1e}, bound {bound:.0e})");
        assert!(
            err <= bound,
            "{what} {name}: gpu {g} vs cpu {c}, |diff| {err:.3e} > {bound:.1e}"
        );
    }
}

/// The metrics but the token count, in `check_metrics`' order.
fn metrics_vec(m: &GrpoLossMetrics) -> Vec<f32> {
    vec![
        m.loss,
        m.kl_mean,
        m.clip_ratio_low,
        m.clip_ratio_high,
        m.clip_ratio_region,
    ]
}

fn configs() -> Vec<GrpoLossConfig> {
    let mut out = Vec::new();
    for loss_type in [LossType::Grpo, LossType::Dapo, LossType::DrGrpo] {
        for beta in [0.0, 0.04] {
            // token-level ratios, and GSPO's per completion (whose mean log-ratio sits nearer
            // 1: a narrower clip range puts completions on both sides of it)
            // and two-sided clipping: a cap δ just above the clip range
            for (importance_sampling, eps_low, eps_high, delta) in [
                (ImportanceSampling::Token, 0.2, 0.28, None),
                (ImportanceSampling::Token, 0.2, 0.28, Some(1.3)),
                (ImportanceSampling::Sequence, 0.04, 0.04, None),
                (ImportanceSampling::Sequence, 0.04, 0.04, Some(1.05)),
            ] {
                out.push(GrpoLossConfig {
                    loss_type,
                    epsilon_low: eps_low,
                    epsilon_high: eps_high,
                    beta,
                    max_completion_len: 64,
                    importance_sampling,
                    delta,
                });
            }
        }
    }
    out
}

/// The separate forward and backward, and the fused pass, each against the CPU's separate ops
/// (the fused op's composite twin is forward, backward, scale).
fn grpo_loss_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    // 7 × 53: odd sizes; 300 × 1029: more rows than a block's threads and a row longer than
    // four passes of 256 threads, for the DAPO total and the device-side metric reduction
    for (batch, len) in [(7, 53), (300, 1029)] {
        let g = grids(r, batch, len);
        let up = |v: &Vec<f32>| gpu.upload(v).unwrap();
        let (lg, og, rg, mg, ag) = (
            up(&g.logp),
            up(&g.old),
            up(&g.reference),
            up(&g.mask),
            up(&g.adv),
        );
        for cfg in configs() {
            println!("  {batch} × {len}, {:?}, beta {}", cfg.loss_type, cfg.beta);
            let want = cpu
                .grpo_loss_forward(
                    &g.logp,
                    &g.old,
                    &g.reference,
                    &g.mask,
                    &g.adv,
                    g.batch,
                    g.len,
                    &cfg,
                )
                .unwrap();
            let mut dwant = vec![0.0; batch * len];
            cpu.grpo_loss_backward(
                &mut dwant,
                &g.logp,
                &g.old,
                &g.reference,
                &g.mask,
                &g.adv,
                g.batch,
                g.len,
                &cfg,
            )
            .unwrap();
            assert!(
                dwant.iter().any(|&d| d != 0.0),
                "the gradient is not all zero"
            );

            let got = gpu
                .grpo_loss_forward(&lg, &og, &rg, &mg, &ag, batch, len, &cfg)
                .unwrap();
            check_metrics("grpo_loss_forward", &got, &want);
            let mut dg = poisoned(gpu, batch * len);
            gpu.grpo_loss_backward(&mut dg, &lg, &og, &rg, &mg, &ag, batch, len, &cfg)
                .unwrap();
            check(
                "grpo_loss_backward dlogp",
                &down(gpu, &dg),
                &dwant,
                LOSS_TOL,
            );

            let grad_scale = 0.37f32;
            let mut df = poisoned(gpu, batch * len);
            let fused = gpu
                .grpo_loss_fused(
                    &mut df, &lg, &og, &rg, &mg, &ag, batch, len, &cfg, grad_scale,
                )
                .unwrap();
            check_metrics("grpo_loss_fused", &fused, &want);
            let scaled: Vec<f32> = dwant.iter().map(|d| d * grad_scale).collect();
            check("grpo_loss_fused dlogp", &down(gpu, &df), &scaled, LOSS_TOL);
            if cfg.beta == 0.0 {
                // no KL term: the reference log-probs are never read, a 1-value buffer will do
                let tiny = gpu.upload(&[f32::NAN]).unwrap();
                let mut dt = poisoned(gpu, batch * len);
                let m = gpu
                    .grpo_loss_fused(&mut dt, &lg, &og, &tiny, &mg, &ag, batch, len, &cfg, 1.0)
                    .unwrap();
                check_metrics("grpo_loss_fused, no reference", &m, &want);
                check(
                    "grpo_loss_fused dlogp, no reference",
                    &down(gpu, &dt),
                    &dwant,
                    LOSS_TOL,
                );
            }
        }
    }
}

/// Advantages of random rewards, with zero-std groups mixed in, at every scaling; a NaN reward
/// is an error naming its index.
fn grpo_advantages_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    // G = 8 over 37 groups; G = 3 over 300 groups (more groups than threads); G = 1
    for (groups, group_size) in [(37usize, 8usize), (300, 3), (5, 1)] {
        let n = groups * group_size;
        let mut rewards = randv(r, n, 1.0);
        for g in (0..groups).step_by(4) {
            let v = rewards[g * group_size];
            rewards[g * group_size..(g + 1) * group_size].fill(v); // an all-equal group
        }
        let rg = gpu.upload(&rewards).unwrap();
        let scales = [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None];
        let stds = [RewardStd::Population, RewardStd::Unbiased];
        for (scale, std) in scales.into_iter().flat_map(|s| stds.map(|d| (s, d))) {
            println!("  {groups} groups of {group_size}, {scale:?}, {std:?} std");
            let mut want = vec![0.0; n];
            let sw = cpu
                .grpo_advantages(&mut want, &rewards, group_size, scale, std, 1e-4)
                .unwrap();
            let mut ag = poisoned(gpu, n);
            let sg = gpu
                .grpo_advantages(&mut ag, &rg, group_size, scale, std, 1e-4)
                .unwrap();
            let got = down(gpu, &ag);
            if group_size > 1 {
                check("grpo_advantages", &got, &want, ADV_TOL);
            } else {
                // every group of one is all-equal: exact zeros (a relative error of 0/0 is moot)
                assert!(got.iter().all(|a| a.to_bits() == 0), "G = 1: {got:?}");
            }
            for g in (0..groups).step_by(4) {
                let members = &got[g * group_size..(g + 1) * group_size];
                assert!(
                    members.iter().all(|a| a.to_bits() == 0),
                    "all-equal group {g}: advantages {members:?}, want exact zeros"
                );
            }
            assert_eq!(sg.frac_reward_zero_std, sw.frac_reward_zero_std);
            check(
                "advantage stats (mean, std)",
                &[sg.reward_mean, sg.reward_std],
                &[sw.reward_mean, sw.reward_std],
                ADV_TOL,
            );
        }
    }
    // non-finite rewards in three different warps (and past one block's 256 threads): the
    // error names the first
    let mut rewards = randv(r, 1000, 1.0);
    rewards[600] = f32::NEG_INFINITY;
    rewards[300] = f32::NAN;
    rewards[40] = f32::INFINITY;
    let mut ag = poisoned(gpu, 1000);
    let err = gpu
        .grpo_advantages(
            &mut ag,
            &gpu.upload(&rewards).unwrap(),
            4,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4,
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("reward 40 is inf"),
        "the error names the first non-finite reward: {err:#}"
    );
    let err = gpu
        .grpo_advantages(
            &mut ag,
            &gpu.upload(&rewards[..10]).unwrap(),
            4,
            ScaleRewards::Group,
            RewardStd::Population,
            1e-4,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("multiple"), "{err:#}");
}

gpu_test!(cuda_grpo_loss, grpo_loss_case);
gpu_test!(cuda_grpo_advantages, grpo_advantages_case);

/// The CPU as the device under test through the same bodies: the comparison code runs in CI, and
/// the CPU's fused op is checked against its separate forward and backward.
#[test]
fn cpu_twin_bodies_run() {
    let cpu = Cpu::new();
    let mut r = <Rand as rand::SeedableRng>::seed_from_u64(11);
    grpo_loss_case(&cpu, &mut r);
    grpo_advantages_case(&cpu, &mut r);
}
