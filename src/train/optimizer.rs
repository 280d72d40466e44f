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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn config(lr: f32, grad_clip: f32, weight_decay: f32) -> AdamWConfig {
        AdamWConfig {
            lr,
            grad_clip,
            weight_decay,
            ..AdamWConfig::default()
        }
    }

    /// AdamW written out in f64 from Loshchilov & Hutter (decoupled decay, bias correction).
    fn reference_step(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        cfg: &AdamWConfig,
        lr: f64,
        t: i32,
    ) {
        let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
        for i in 0..p.len() {
            p[i] -= lr * cfg.weight_decay as f64 * p[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - b1.powi(t));
            let v_hat = v[i] / (1.0 - b2.powi(t));
            p[i] -= lr * m_hat / (v_hat.sqrt() + cfg.eps as f64);
        }
    }

    #[test]
    fn schedule_warms_up_then_follows_cosine_to_the_floor() {
        let cfg = AdamWConfig {
            lr: 1e-3,
            warmup_steps: 4,
            schedule: LrSchedule::Cosine,
            total_steps: 14,
            min_lr_ratio: 0.1,
            ..AdamWConfig::default()
        };
        cfg.validate().unwrap();
        // Tolerance: f32 rounding of an O(1e-3) value.
        let close = |step: u64, want: f64| {
            let got = cfg.lr_at(step) as f64;
            assert!(
                (got - want).abs() <= 1e-9,
                "lr_at({step}) = {got}, want {want}"
            );
        };
        close(0, 0.0);
        close(1, 0.25e-3);
        close(4, 1e-3);
        close(9, 1e-3 * (0.1 + 0.9 * 0.5)); // halfway through the cosine
        close(14, 1e-4);
        close(1000, 1e-4);
        let constant = AdamWConfig {
            lr: 2e-5,
            warmup_steps: 0,
            ..AdamWConfig::default()
        };
        assert_eq!((constant.lr_at(1), constant.lr_at(500)), (2e-5, 2e-5));
    }

    #[test]
    fn config_defaults_parse_and_bad_fields_are_named() {
        let cfg: AdamWConfig =
            toml::from_str("lr = 3e-6\nschedule = \"cosine\"\ntotal_steps = 10").unwrap();
        assert_eq!(
            (cfg.beta1, cfg.beta2, cfg.eps, cfg.grad_clip),
            (0.9, 0.99, 1e-8, 1.0)
        );
        assert_eq!(
            (cfg.lr, cfg.schedule, cfg.weight_decay),
            (3e-6, LrSchedule::Cosine, 0.0)
        );
        assert!(
            toml::from_str::<AdamWConfig>("learning_rate = 1.0").is_err(),
            "unknown fields are refused"
        );
        let message = |c: AdamWConfig| format!("{:#}", c.validate().unwrap_err());
        assert!(message(AdamWConfig { beta2: 1.0, ..cfg }).contains("beta2"));
        assert!(message(AdamWConfig {
            lr: f32::NAN,
            ..cfg
        })
        .contains("lr"));
        assert!(message(AdamWConfig {
            total_steps: 0,
            ..cfg
        })
        .contains("total_steps"));
        let err = AdamW::new(
            &Cpu::new(),
            &[3],
            AdamWConfig {
                grad_clip: -1.0,
                ..cfg
            },
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("grad_clip"));
    }

    #[test]
    fn steps_match_a_host_reference_of_adamw() {
        let backend = Cpu::new();
        let cfg = AdamWConfig {
            warmup_steps: 2,
            ..config(0.05, 0.0, 0.1)
        };
        let host_params = [vec![0.5f32, -1.0, 2.0], vec![0.25f32, 0.0]];
        let mut params: Vec<_> = host_params
            .iter()
            .map(|p| backend.upload(p).unwrap())
            .collect();
        let mut opt = AdamW::new(&backend, &[3, 2], cfg).unwrap();
        let mut p: Vec<Vec<f64>> = host_params
            .iter()
            .map(|t| t.iter().map(|&x| x as f64).collect())
            .collect();
        let mut m: Vec<Vec<f64>> = p.iter().map(|t| vec![0.0; t.len()]).collect();
        let mut v = m.clone();
        for t in 1..=5 {
            let host_grads = [
                vec![0.3f32 * t as f32, -0.2, 0.05],
                vec![-1.0f32, 0.7 / t as f32],
            ];
            let mut grads: Vec<_> = host_grads
                .iter()
                .map(|g| backend.upload(g).unwrap())
                .collect();
            let info = {
                let mut param_refs: Vec<_> = params.iter_mut().collect();
                let mut grad_refs: Vec<_> = grads.iter_mut().collect();
                opt.step(&backend, &mut param_refs, &mut grad_refs).unwrap()
            };
            let lr = cfg.lr_at(t) as f64;
            assert_eq!(info.lr as f64, lr);
            assert!(!info.clipped, "grad_clip 0 disables clipping");
            for k in 0..2 {
                let g: Vec<f64> = host_grads[k].iter().map(|&x| x as f64).collect();
                reference_step(&mut p[k], &g, &mut m[k], &mut v[k], &cfg, lr, t as i32);
                let got = backend.download(&params[k]).unwrap();
                for (i, (&a, &b)) in got.iter().zip(&p[k]).enumerate() {
                    // f32 update arithmetic against f64: a few ulps of O(1) values.
                    assert!(
                        (a as f64 - b).abs() <= 2e-6,
                        "step {t}, tensor {k}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
        assert_eq!(opt.steps_done(), 5);
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients() {
        let backend = Cpu::new();
        let mut opt = AdamW::new(&backend, &[1, 1], config(0.1, 1.0, 0.0)).unwrap();
        let mut params = [
            backend.upload(&[1.0]).unwrap(),
            backend.upload(&[1.0]).unwrap(),
        ];
        // Norm of (3, 4) across two tensors is 5 → both scaled by 1/5.
        let mut grads = [
            backend.upload(&[3.0]).unwrap(),
            backend.upload(&[-4.0]).unwrap(),
        ];
        let [p0, p1] = &mut params;
        let [g0, g1] = &mut grads;
        let info = opt.step(&backend, &mut [p0, p1], &mut [g0, g1]).unwrap();
        assert_eq!((info.grad_norm, info.clipped), (5.0, true));
        // Tolerance: one f32 rounding of the scale factor 0.2.
        let scaled = [
            backend.download(&grads[0]).unwrap()[0],
            backend.download(&grads[1]).unwrap()[0],
        ];
        assert!(
            (scaled[0] - 0.6).abs() <= 1e-6 && (scaled[1] + 0.8).abs() <= 1e-6,
            "{scaled:?}"
        );
        // Below the threshold nothing is scaled.
        let mut grads = [
            backend.upload(&[0.3]).unwrap(),
            backend.upload(&[0.4]).unwrap(),
        ];
        let [g0, g1] = &mut grads;
        let [p0, p1] = &mut params;
        let info = opt.step(&backend, &mut [p0, p1], &mut [g0, g1]).unwrap();
        assert!(!info.clipped && (info.grad_norm - 0.5).abs() <= 1e-7);
        assert_eq!(backend.download(&grads[1]).unwrap(), vec![0.4]);
    }

    #[test]
    fn non_finite_gradient_is_refused_before_any_change() {
        let backend = Cpu::new();
        let mut opt = AdamW::new(&backend, &[2, 2], config(0.1, 1.0, 0.0)).unwrap();
        let mut params = [
            backend.upload(&[1.0, 2.0]).unwrap(),
            backend.upload(&[3.0, 4.0]).unwrap(),
        ];
        let mut grads = [
            backend.upload(&[50.0, 50.0]).unwrap(),
            backend.upload(&[1.0, f32::NAN]).unwrap(),
        ];
        let [p0, p1] = &mut params;
        let [g0, g1] = &mut grads;
        let err = opt
            .step(&backend, &mut [p0, p1], &mut [g0, g1])
            .unwrap_err();
        assert!(format!("{err:#}").contains("parameter 1"), "{err:#}");
        assert_eq!(backend.download(&params[0]).unwrap(), vec![1.0, 2.0]);
        assert_eq!(backend.download(&params[1]).unwrap(), vec![3.0, 4.0]);
        assert_eq!(
            backend.download(&grads[0]).unwrap(),
            vec![50.0, 50.0],
            "no clipping happened"
        );
        assert_eq!(opt.steps_done(), 0);
        assert_eq!(
            opt.state_to_host(&backend).unwrap().m,
            vec![vec![0.0; 2]; 2]
        );
        // Shape mismatches name the tensor.
        let mut short = backend.upload(&[1.0]).unwrap();
        let [p0, p1] = &mut params;
        let [g0, _] = &mut grads;
        let err = opt
            .step(&backend, &mut [p0, p1], &mut [g0, &mut short])
            .unwrap_err();
        assert!(format!("{err:#}").contains("parameter 1"), "{err:#}");
    }

    #[test]
    fn state_round_trip_resumes_bit_exactly() {
        let backend = Cpu::new();
        let cfg = config(0.01, 1.0, 0.05);
        type Buf = <Cpu as Backend>::Buf;
        let run = |opt: &mut AdamW<Cpu>, param: &mut Buf, steps: std::ops::Range<u32>| {
            for t in steps {
                let host_grad = [(t as f32).sin(), 0.3 - t as f32 * 0.1, 2.0];
                let mut grad = backend.upload(&host_grad).unwrap();
                opt.step(&backend, &mut [param], &mut [&mut grad]).unwrap();
            }
        };
        let mut straight = AdamW::new(&backend, &[3], cfg).unwrap();
        let mut param_straight = backend.upload(&[1.0, -1.0, 0.5]).unwrap();
        run(&mut straight, &mut param_straight, 0..6);

        let mut first = AdamW::new(&backend, &[3], cfg).unwrap();
        let mut param_resumed = backend.upload(&[1.0, -1.0, 0.5]).unwrap();
        run(&mut first, &mut param_resumed, 0..3);
        let state = first.state_to_host(&backend).unwrap();
        let mut resumed = AdamW::new(&backend, &[3], cfg).unwrap();
        resumed.state_from_host(&backend, &state).unwrap();
        assert_eq!(resumed.steps_done(), 3);
        run(&mut resumed, &mut param_resumed, 3..6);
        let bits = |b: &Buf| {
            let host = backend.download(b).unwrap();
            host.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(bits(&param_resumed), bits(&param_straight));

        let wrong = AdamWState {
            step: 1,
            m: vec![vec![0.0; 2]],
            v: vec![vec![0.0; 3]],
        };
        let err = resumed.state_from_host(&backend, &wrong).unwrap_err();
        assert!(format!("{err:#}").contains("tensor 0"), "{err:#}");
        assert_eq!(
            resumed.steps_done(),
            6,
            "a refused state leaves the optimiser unchanged"
        );
    }
}
