//! Launchers for kernels/grpo_loss.cu: the clipped-ratio + k3-KL loss (forward, backward,
//! and the fused pass the trainer uses) and the group-relative advantages. The CPU oracles are
//! `backend/cpu/grpo_loss.rs` and `backend/cpu/grpo_advantages.rs`.

use super::kernels::{self, defines, GrpoParams};
use super::{dim_i32, grid_rows, need, Cuda};
use crate::backend::cpu::grpo_advantages::check_advantage_inputs;
use crate::backend::cpu::grpo_loss::check_grpo_inputs;
use crate::backend::{
    AdvantageStats, GrpoLossConfig, GrpoLossMetrics, ImportanceSampling, LossType, RewardStd,
    ScaleRewards,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::CudaSlice;

fn grpo_params(cfg: &GrpoLossConfig) -> Result<GrpoParams> {
    Ok(GrpoParams {
        epsilon_low: cfg.epsilon_low,
        epsilon_high: cfg.epsilon_high,
        beta: cfg.beta,
        use_ref: (cfg.beta != 0.0) as i32,
        loss_type: match cfg.loss_type {
            LossType::Grpo => defines::GRPO_LOSS_GRPO as i32,
            LossType::Dapo => defines::GRPO_LOSS_DAPO as i32,
            LossType::DrGrpo => defines::GRPO_LOSS_DR_GRPO as i32,
        },
        max_completion_len: dim_i32(cfg.max_completion_len, "max_completion_len")?,
        sequence_level: i32::from(cfg.importance_sampling == ImportanceSampling::Sequence),
        delta: cfg.delta.unwrap_or(f32::INFINITY),
    })
}

/// What every GRPO loss launcher starts with: the shared input checks, the kernel parameters,
/// the reference grid to pass, and the dimensions as the kernels' `int`s.
struct LossLaunch<'a> {
    params: GrpoParams,
    /// `ref_logp`, or `logp` (never read) without a KL term, when `ref_logp` may be empty
    reference: &'a CudaSlice<f32>,
    batch_i: i32,
    len_i: i32,
}

/// `[logp, old_logp, ref_logp, mask, advantages]` of a `[batch, len]` loss call named `what`.
fn loss_launch<'a>(
    what: &str,
    [logp, old_logp, ref_logp, mask, advantages]: [&'a CudaSlice<f32>; 5],
    batch: usize,
    len: usize,
    cfg: &GrpoLossConfig,
) -> Result<LossLaunch<'a>> {
    check_grpo_inputs(
        what,
        logp.len(),
        old_logp.len(),
        ref_logp.len(),
        mask.len(),
        advantages.len(),
        batch,
        len,
        cfg,
    )?;
    Ok(LossLaunch {
        params: grpo_params(cfg)?,
        reference: if cfg.beta != 0.0 { ref_logp } else { logp },
        batch_i: dim_i32(batch, "batch")?,
        len_i: dim_i32(len, "len")?,
    })
}

/// Metrics from the column sums `[Σ weighted loss, Σm·kl, Σm·clip_low, Σm·clip_high, Σm]`
/// (the loss already divided by its denominator). In sequence mode the clip sums count
/// clipped completions (the kernels write row indicators), shared over all `batch` rows.
fn metrics_from_sums(
    [loss, kl_sum, low, high, count]: [f64; 5],
    cfg: &GrpoLossConfig,
    batch: usize,
) -> GrpoLossMetrics {
    let mean = |s: f64| if count > 0.0 { (s / count) as f32 } else { 0.0 };
    let clip_share = |s: f64| match cfg.importance_sampling {
        ImportanceSampling::Token => mean(s),
        ImportanceSampling::Sequence => (s / batch.max(1) as f64) as f32,
    };
    GrpoLossMetrics {
        loss: loss as f32,
        kl_mean: mean(kl_sum),
        clip_ratio_low: clip_share(low),
        clip_ratio_high: clip_share(high),
        // disjoint cases (A < 0 and A > 0), so the union is the sum
        clip_ratio_region: clip_share(low + high),
        tokens: count as f32,
    }
}

impl Cuda {
    /// `row_count[b] = Σ_t mask[b, t]` (f64), for the loss denominators.
    fn grpo_row_count(
        &self,
        mask: &CudaSlice<f32>,
        batch: usize,
        len: usize,
    ) -> Result<CudaSlice<f64>> {
        let len_i = dim_i32(len, "len")?;
        let mut row_count = self.alloc_f64(batch)?;
        kernels::grpo_mask_count(self, grid_rows(batch, 256)?, &mut row_count, mask, &len_i)?;
        Ok(row_count)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn grpo_loss_forward_impl(
        &self,
        logp: &CudaSlice<f32>,
        old_logp: &CudaSlice<f32>,
        ref_logp: &CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        advantages: &CudaSlice<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<GrpoLossMetrics> {
        self.not_capturing("grpo_loss_forward")?; // it reads results back to the host
        let LossLaunch {
            params,
            reference,
            len_i,
            ..
        } = loss_launch(
            "grpo_loss_forward",
            [logp, old_logp, ref_logp, mask, advantages],
            batch,
            len,
            cfg,
        )?;
        if batch == 0 {
            return Ok(GrpoLossMetrics::default());
        }
        let mut partials = self.alloc_f64(batch * 5)?;
        kernels::grpo_loss_forward(
            self,
            grid_rows(batch, 256)?,
            &mut partials,
            logp,
            old_logp,
            reference,
            mask,
            advantages,
            &len_i,
            &params,
        )?;
        let rows = self
            .stream
            .clone_dtoh(&partials)
            .context("cuda backend: download")?;
        self.synchronize()?;
        let mut sums = [0f64; 5];
        let mut grpo_loss = 0f64;
        for row in rows.chunks_exact(5).take(batch) {
            for (acc, v) in sums.iter_mut().zip(row) {
                *acc += v;
            }
            // grpo: each completion's mean over its own tokens
            grpo_loss += row[0] / (row[4].max(1.0) * batch as f64);
        }
        sums[0] = match cfg.loss_type {
            LossType::Grpo => grpo_loss,
            LossType::Dapo => sums[0] / sums[4].max(1.0),
            LossType::DrGrpo => sums[0] / (batch * cfg.max_completion_len.max(1)) as f64,
        };
        Ok(metrics_from_sums(sums, cfg, batch))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn grpo_loss_backward_impl(
        &self,
        dlogp: &mut CudaSlice<f32>,
        logp: &CudaSlice<f32>,
        old_logp: &CudaSlice<f32>,
        ref_logp: &CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        advantages: &CudaSlice<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
    ) -> Result<()> {
        let LossLaunch {
            params,
            reference,
            batch_i,
            len_i,
        } = loss_launch(
            "grpo_loss_backward",
            [logp, old_logp, ref_logp, mask, advantages],
            batch,
            len,
            cfg,
        )?;
        need(dlogp, batch * len, "dlogp")?;
        if batch == 0 {
            return Ok(());
        }
        let row_count = self.grpo_row_count(mask, batch, len)?;
        kernels::grpo_loss_backward(
            self,
            grid_rows(batch, 256)?,
            dlogp,
            logp,
            old_logp,
            reference,
            mask,
            advantages,
            &row_count,
            &batch_i,
            &len_i,
            &params,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn grpo_loss_fused_impl(
        &self,
        dlogp: &mut CudaSlice<f32>,
        logp: &CudaSlice<f32>,
        old_logp: &CudaSlice<f32>,
        ref_logp: &CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        advantages: &CudaSlice<f32>,
        batch: usize,
        len: usize,
        cfg: &GrpoLossConfig,
        grad_scale: f32,
    ) -> Result<GrpoLossMetrics> {
        self.not_capturing("grpo_loss_fused")?; // it reads results back to the host
        let LossLaunch {
            params,
            reference,
            batch_i,
            len_i,
        } = loss_launch(
            "grpo_loss_fused",
            [logp, old_logp, ref_logp, mask, advantages],
            batch,
            len,
            cfg,
        )?;
        need(dlogp, batch * len, "dlogp")?;
        ensure!(
            grad_scale.is_finite(),
            "grpo_loss_fused: `grad_scale` = {grad_scale} must be finite"
        );
        if batch == 0 {
            return Ok(GrpoLossMetrics::default());
        }
        // only dapo's denominator needs the whole batch's mask count before the pass
        let row_count = match cfg.loss_type {
            LossType::Dapo => self.grpo_row_count(mask, batch, len)?,
            // never read: uninitialised (no memset on the path the ≤ 15 µs target times)
            // SAFETY: the kernel reads `row_count` only for dapo
            _ => unsafe { self.stream.alloc::<f64>(1) }
                .context("cuda backend: allocating a placeholder")?,
        };
        // SAFETY (both): every block writes its 5 partials before the last block reads them,
        // and the last block writes all 5 sums before the download.
        let mut partials = unsafe { self.stream.alloc::<f64>(batch * 5) }
            .context("cuda backend: allocating the loss partials")?;
        let mut sums = unsafe { self.stream.alloc::<f64>(5) }
            .context("cuda backend: allocating the loss sums")?;
        let mut ticket = self
            .grpo_ticket
            .lock()
            .map_err(|_| anyhow!("cuda backend: grpo ticket mutex poisoned"))?;
        if ticket.is_none() {
            *ticket = Some(self.alloc_u32(1)?);
        }
        let ticket = ticket.as_mut().expect("allocated above");
        kernels::grpo_loss_fused(
            self,
            grid_rows(batch, 256)?,
            dlogp,
            &mut partials,
            &mut sums,
            ticket,
            logp,
            old_logp,
            reference,
            mask,
            advantages,
            &row_count,
            &batch_i,
            &len_i,
            &params,
            &grad_scale,
        )?;
        let sums = self
            .stream
            .clone_dtoh(&sums)
            .context("cuda backend: downloading the loss metrics")?;
        self.synchronize()?;
        Ok(metrics_from_sums(
            [sums[0], sums[1], sums[2], sums[3], sums[4]],
            cfg,
            batch,
        ))
    }

    pub(super) fn grpo_advantages_impl(
        &self,
        advantages: &mut CudaSlice<f32>,
        rewards: &CudaSlice<f32>,
        group_size: usize,
        scale: ScaleRewards,
        std: RewardStd,
        eps: f32,
    ) -> Result<AdvantageStats> {
        self.not_capturing("grpo_advantages")?; // it reads results back to the host
        let n = rewards.len();
        check_advantage_inputs(n, group_size, eps)?;
        need(advantages, n, "advantages")?;
        let scale_i: i32 = match scale {
            ScaleRewards::Group => defines::SCALE_GROUP as i32,
            ScaleRewards::Batch => defines::SCALE_BATCH as i32,
            ScaleRewards::None => defines::SCALE_NONE as i32,
        };
        let (n_i, g_i) = (dim_i32(n, "rewards")?, dim_i32(group_size, "group_size")?);
        let unbiased = i32::from(std == RewardStd::Unbiased);
        let mut stats = self.alloc_f64(4)?;
        kernels::grpo_advantages(
            self,
            grid_rows(1, 256)?, // one block: the batch is rows, not tokens
            advantages,
            &mut stats,
            rewards,
            &n_i,
            &g_i,
            &scale_i,
            &unbiased,
            &eps,
        )?;
        let s = self
            .stream
            .clone_dtoh(&stats)
            .context("cuda backend: downloading the advantage statistics")?;
        self.synchronize()?;
        if s[3] > 0.0 {
            let i = s[3] as usize - 1; // the kernel writes 1 + the index
            let value = self
                .stream
                .clone_dtoh(&rewards.slice(i..i + 1))
                .context("cuda backend: downloading a reward")?;
            self.synchronize()?;
            bail!("group_advantages: reward {i} is {} (not finite)", value[0]);
        }
        Ok(AdvantageStats {
            frac_reward_zero_std: (s[2] / (n / group_size) as f64) as f32,
            reward_mean: s[0] as f32,
            reward_std: s[1] as f32,
        })
    }
}
