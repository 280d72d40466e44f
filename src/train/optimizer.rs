//! AdamW driver over any [`Backend`]: finiteness check, global-norm clipping, learning-rate
//! schedule, then one fused `adamw_step` per tensor (../shared/CADA.md, step 8).
//!
//! Parameters and moments are f32 buffers (the f32 master weights); the per-tensor update
//! itself, with bias correction and decoupled weight decay, is the backend's op.

use crate::backend::Backend;
use anyhow::{bail, ensure, Result};

/// Shape of the learning rate after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// half cosine from `lr` down to `lr · min_lr_ratio` at `total_steps`
    Cosine,
}

/// AdamW hyper-parameters and the learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// peak learning rate
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// global L2 norm the gradients are clipped to; 0 disables clipping
    pub grad_clip: f32,
    /// steps of linear warm-up: step s (from 1) uses `lr · s / warmup_steps`
    pub warmup_steps: u64,
    pub schedule: LrSchedule,
    /// the step the cosine schedule reaches its floor (required by `cosine`)
    pub total_steps: u64,
    /// floor of the cosine schedule as a fraction of `lr`
    pub min_lr_ratio: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            total_steps: 0,
            min_lr_ratio: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        let finite_non_negative = [
            ("lr", self.lr),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ];
        for (field, value) in finite_non_negative {
            if !(value.is_finite() && value >= 0.0) {
                bail!("optimizer config: `{field}` = {value} must be finite and ≥ 0");
            }
        }
        for (field, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                bail!("optimizer config: `{field}` = {value} must be in [0, 1)");
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!(
                "optimizer config: `min_lr_ratio` = {} must be in [0, 1]",
                self.min_lr_ratio
            );
        }
        if self.schedule == LrSchedule::Cosine {
            ensure!(
                self.total_steps > self.warmup_steps,
                "optimizer config: `total_steps` ({}) must exceed `warmup_steps` ({}) for the cosine schedule",
                self.total_steps,
                self.warmup_steps
            );
        }
        Ok(())
    }

    /// Learning rate of update number `step` (counting from 1): linear warm-up to `lr` over
    /// `warmup_steps`, then constant or a half cosine reaching `lr · min_lr_ratio` at
    /// `total_steps` and staying there. Step 0 (no update yet) maps to 0 under warm-up.
    pub fn lr_at(&self, step: u64) -> f32 {
        let cfg = self;
        if cfg.warmup_steps > 0 && step <= cfg.warmup_steps {
            return cfg.lr * step as f32 / cfg.warmup_steps as f32;
        }
        match cfg.schedule {
            LrSchedule::Constant => cfg.lr,
            LrSchedule::Cosine => {
                // validate() guarantees total > warmup; the max keeps an unvalidated config finite.
                let span = cfg.total_steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
                let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                let ratio = cfg.min_lr_ratio as f64;
                (cfg.lr as f64 * (ratio + (1.0 - ratio) * cosine)) as f32
            }
        }
    }
}

/// What one optimiser step did, for the step log.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepInfo {
    /// global L2 norm of the gradients before clipping
    pub grad_norm: f32,
    /// learning rate applied
    pub lr: f32,
    /// whether the gradients were scaled down
    pub clipped: bool,
}

/// Host copy of the optimiser state, for checkpoints (bit-exact resume).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    /// updates applied so far
    pub step: u64,
    /// first moments, one vector per parameter tensor
    pub m: Vec<Vec<f32>>,
    /// second moments, one vector per parameter tensor
    pub v: Vec<Vec<f32>>,
}

pub struct AdamW<B: Backend> {
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    step: u64,
    cfg: AdamWConfig,
}

impl<B: Backend> AdamW<B> {
    /// Zeroed moments for tensors of `param_lens` elements each.
    pub fn new(backend: &B, param_lens: &[usize], cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let m = param_lens
            .iter()
            .map(|&n| backend.zeros(n))
            .collect::<Result<Vec<_>>>()?;
        let v = param_lens
            .iter()
            .map(|&n| backend.zeros(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { m, v, step: 0, cfg })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Updates applied so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Learning rate of update number `step` (counting from 1); see [`AdamWConfig::lr_at`].
    pub fn lr_at(&self, step: u64) -> f32 {
        self.cfg.lr_at(step)
    }

    /// One update. Refuses (touching nothing) when a gradient is non-finite, naming the
    /// parameter index; otherwise clips to `grad_clip` by global norm (scaling the gradients
    /// in place) and applies AdamW to every tensor.
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut [&mut B::Buf],
        grads: &mut [&mut B::Buf],
    ) -> Result<StepInfo> {
        ensure!(
            params.len() == self.m.len() && grads.len() == self.m.len(),
            "optimizer: built for {} tensors, got {} parameters and {} gradients",
            self.m.len(),
            params.len(),
            grads.len()
        );
        for (i, (param, grad)) in params.iter().zip(grads.iter()).enumerate() {
            let expected = backend.len(&self.m[i]);
            ensure!(
                backend.len(param) == expected && backend.len(grad) == expected,
                "optimizer: parameter {i} has {} elements and its gradient {}, expected {expected}",
                backend.len(param),
                backend.len(grad)
            );
        }
        let mut sum_squares = 0.0f64;
        for (i, grad) in grads.iter().enumerate() {
            if !backend.all_finite(grad)? {
                bail!("optimizer: gradient of parameter {i} contains NaN or Inf; update skipped");
            }
            sum_squares += backend.sum_squares(grad)?;
        }
        let grad_norm = sum_squares.sqrt();
        ensure!(
            grad_norm.is_finite(),
            "optimizer: global gradient norm overflowed ({grad_norm}); update skipped"
        );

        let clip = self.cfg.grad_clip as f64;
        let clipped = clip > 0.0 && grad_norm > clip;
        if clipped {
            let factor = (clip / grad_norm) as f32;
            for grad in grads.iter_mut() {
                backend.scale(grad, factor)?;
            }
        }

        let step = self.step + 1;
        let lr = self.lr_at(step);
        let cfg = self.cfg;
        for (i, (param, grad)) in params.iter_mut().zip(grads.iter()).enumerate() {
            backend.adamw_step(
                param,
                grad,
                &mut self.m[i],
                &mut self.v[i],
                lr,
                cfg.beta1,
                cfg.beta2,
                cfg.eps,
                cfg.weight_decay,
                step,
            )?;
        }
        self.step = step;
        Ok(StepInfo {
            grad_norm: grad_norm as f32,
            lr,
            clipped,
        })
    }

    /// Copies the moments and the step count to the host.
    pub fn state_to_host(&self, backend: &B) -> Result<AdamWState> {
        Ok(AdamWState {
            step: self.step,
            m: self
                .m
                .iter()
                .map(|b| backend.download(b))
                .collect::<Result<_>>()?,
            v: self
                .v
                .iter()
                .map(|b| backend.download(b))
                .collect::<Result<_>>()?,
        })
    }

    /// Replaces the moments and step count with `state` (from [`Self::state_to_host`]);
    /// errors naming the tensor when a length does not match, leaving `self` unchanged.
    pub fn state_from_host(&mut self, backend: &B, state: &AdamWState) -> Result<()> {
        ensure!(
            state.m.len() == self.m.len() && state.v.len() == self.m.len(),
            "optimizer state: {} first and {} second moments, expected {} tensors",
            state.m.len(),
            state.v.len(),
            self.m.len()
        );
        for (i, (m, v)) in state.m.iter().zip(&state.v).enumerate() {
            let expected = backend.len(&self.m[i]);
            ensure!(
                m.len() == expected && v.len() == expected,
                "optimizer state: tensor {i} has moments of {} and {} elements, expected {expected}",
                m.len(),
                v.len()
            );
        }
        let m = state
            .m
            .iter()
            .map(|h| backend.upload(h))
            .collect::<Result<Vec<_>>>()?;
        let v = state
            .v
            .iter()
            .map(|h| backend.upload(h))
            .collect::<Result<Vec<_>>>()?;
        self.m = m;
        self.v = v;
        self.step = state.step;
        Ok(())
    }
}
