//! Bodies of `cada train`, `eval`, `sft`, `dpo` and `build-default-model` on the chosen device.

use super::OnDevice;
use crate::backend::Backend;
use crate::cada::chat_data::{dpo_pair, sft_example};
use crate::cada::config::TrainConfig;
use crate::cada::data::{DpoRecord, PromptItem, SftRecord};
use crate::cada::default_model::{build_default_model, BuildOptions};
use crate::cada::dpo::{dpo_train, DpoConfig, DpoPair};
use crate::cada::eval::EvalReport;
use crate::cada::evaluate::{evaluate_model, EvalOptions};
use crate::cada::run::{run_train, TrainSummary};
use crate::cada::sft::{sft_train, SftConfig};
use crate::model::llama::Llama;
use crate::model::load::LoadedModel;
use crate::model::save::save_model_dir;
use crate::train::optimizer::AdamWConfig;
use anyhow::Result;
use std::path::PathBuf;

pub struct TrainTask {
    pub cfg: TrainConfig,
    pub resume: bool,
    pub progress: bool,
}

impl OnDevice for TrainTask {
    type Output = TrainSummary;
    fn run<B: Backend>(self, be: &B) -> Result<TrainSummary> {
        eprintln!(
            "cada train on {} → {}",
            be.name(),
            self.cfg.out_dir.display()
        );
        run_train(be, self.cfg, self.resume, self.progress)
    }
}

pub fn format_summary(s: &TrainSummary) -> String {
    let mut out = format!(
        "{} steps; reward {:+.3} (first step) → {:+.3} (last step)",
        s.steps, s.first_reward, s.last_reward
    );
    if let (Some(b), Some(a)) = (&s.before, &s.after) {
        out.push_str(&format!(
            "\nheld-out harmful compliance {:.1}% → {:.1}%; over-refusal {:.1}% → {:.1}%",
            100.0 * b.harmful_compliance_rate,
            100.0 * a.harmful_compliance_rate,
            100.0 * b.over_refusal_rate,
            100.0 * a.over_refusal_rate
        ));
    }
    out
}

pub struct EvalTask<'a> {
    pub model: &'a LoadedModel,
    pub items: Vec<PromptItem>,
    pub opts: EvalOptions,
}

impl OnDevice for EvalTask<'_> {
    type Output = EvalReport;
    fn run<B: Backend>(self, be: &B) -> Result<EvalReport> {
        let model = Llama::from_host(be, self.model.cfg.clone(), &self.model.params)?;
        evaluate_model(be, &model, self.model, &self.items, &self.opts)
    }
}

pub struct SftTask<'a> {
    pub model: &'a LoadedModel,
    pub records: Vec<SftRecord>,
    /// TRL's `assistant_only_loss`: train on the template's `{% generation %}` output only
    pub assistant_only_loss: bool,
    pub out: PathBuf,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub seed: u64,
}

impl OnDevice for SftTask<'_> {
    type Output = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let m = self.model;
        let data: Vec<_> = self
            .records
            .iter()
            .map(|r| sft_example(m, r, self.assistant_only_loss))
            .collect::<Result<_>>()?;
        let mut model = Llama::from_host(be, m.cfg.clone(), &m.params)?;
        let cfg = SftConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            seed: self.seed,
            optim: AdamWConfig {
                lr: self.lr,
                total_steps: self.steps as u64,
                warmup_steps: (self.steps as u64 / 20).max(1),
                ..AdamWConfig::default()
            },
        };
        sft_train(be, &mut model, &data, &cfg, |l| {
            eprintln!(
                "sft step {:5} | loss {:.4} | grad norm {:.3} | lr {:.2e} | {:.0} tok/s",
                l.step, l.loss, l.grad_norm, l.lr, l.tokens_per_s
            )
        })?;
        save_model_dir(
            &self.out,
            &m.cfg,
            &model.to_host(be)?,
            &m.tokenizer,
            &m.tokenizer_config,
        )?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

pub struct DpoTask<'a> {
    pub model: &'a LoadedModel,
    pub records: Vec<DpoRecord>,
    pub out: PathBuf,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub beta: f32,
    pub seed: u64,
}

impl OnDevice for DpoTask<'_> {
    type Output = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let m = self.model;
        let pairs: Vec<DpoPair> = self
            .records
            .iter()
            .map(|r| dpo_pair(m, r))
            .collect::<Result<_>>()?;
        let mut model = Llama::from_host(be, m.cfg.clone(), &m.params)?;
        let reference = Llama::from_host(be, m.cfg.clone(), &m.params)?;
        let cfg = DpoConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            beta: self.beta,
            seed: self.seed,
            optim: AdamWConfig {
                lr: self.lr,
                total_steps: self.steps as u64,
                warmup_steps: (self.steps as u64 / 20).max(1),
                ..AdamWConfig::default()
            },
        };
        dpo_train(be, &mut model, &reference, &pairs, &cfg, |l| {
            eprintln!(
                "dpo step {:5} | loss {:.4} | accuracy {:.2} | margin {:+.3} | grad norm {:.3}",
                l.step, l.loss, l.accuracy, l.margin, l.grad_norm
            )
        })?;
        save_model_dir(
            &self.out,
            &m.cfg,
            &model.to_host(be)?,
            &m.tokenizer,
            &m.tokenizer_config,
        )?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

pub struct BuildDefaultTask {
    pub opts: BuildOptions,
}

impl OnDevice for BuildDefaultTask {
    type Output = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let spec = crate::cada::spec::load_spec(&self.opts.spec)?;
        build_default_model(be, &spec, &self.opts, |s| eprintln!("{s}"))
    }
}
