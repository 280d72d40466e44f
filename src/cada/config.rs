//! `cada train` configuration: a TOML file whose every field can also be set from the command
//! line with `--set section.field=value` (and the common ones with named flags).

use crate::backend::device::DeviceChoice;
use crate::backend::{GrpoLossConfig, ImportanceSampling, LossType};
use crate::cada::judge::RuleJudgeConfig;
use crate::train::advantages::{RewardStd, ScaleRewards};
use crate::train::generate::SamplingConfig;
use crate::train::optimizer::AdamWConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which context the update's log-probs are computed in (../shared/CADA.md step 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainContext {
    /// the raw prompt, codes and cases removed (context distillation)
    Raw,
    /// the same context as sampling
    Deliberation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossSection {
    pub loss_type: LossType,
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    pub beta: f32,
    pub scale_rewards: ScaleRewards,
    /// `token` (GRPO's ratio per token, the default) or `sequence` (GSPO's, per completion)
    pub importance_sampling_level: ImportanceSampling,
    /// `population` (the default) or `unbiased` (TRL's) standard deviation
    pub reward_std: RewardStd,
    /// eps in A = (r − mean) / (std + eps)
    pub advantage_eps: f32,
    /// mask completions that hit the length limit without a stop token
    pub mask_truncated: bool,
    /// two-sided clipping (TRL's `delta`): cap the unclipped ratio at δ > 1 + epsilon_high
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f32>,
}

impl Default for LossSection {
    fn default() -> Self {
        LossSection {
            loss_type: LossType::Grpo,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.04,
            scale_rewards: ScaleRewards::Group,
            importance_sampling_level: ImportanceSampling::Token,
            reward_std: RewardStd::Population,
            advantage_eps: 1e-4,
            mask_truncated: false,
            delta: None,
        }
    }
}

impl LossSection {
    pub fn grpo(&self, max_completion_len: usize) -> GrpoLossConfig {
        GrpoLossConfig {
            loss_type: self.loss_type,
            epsilon_low: self.epsilon_low,
            epsilon_high: self.epsilon_high,
            beta: self.beta,
            max_completion_len,
            importance_sampling: self.importance_sampling_level,
            delta: self.delta,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum JudgeConfig {
    /// the built-in refusal/format rule judge
    Rule(RuleJudgeConfig),
    /// an external command: JSONL (prompt, completion, label) on stdin → one reward per line
    Command { command: String, timeout_s: f64 },
    /// a causal LM (guard or instruct model) scored by the log-prob margin of its verdict words
    Model {
        model: PathBuf,
        good: String,
        bad: String,
        margin_scale: f32,
    },
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig::Rule(RuleJudgeConfig::default())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: PathBuf,
    pub spec: PathBuf,
    pub prompts: PathBuf,
    /// held-out prompts evaluated at the start, every `eval_every` steps and at the end
    pub eval_prompts: Option<PathBuf>,
    /// how many held-out prompts to evaluate (0 = all)
    pub eval_limit: usize,
    /// sampling temperature of the evaluation (0 = greedy)
    pub eval_temperature: f32,
    /// completions per held-out prompt
    pub eval_samples: usize,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub steps: usize,
    pub prompts_per_step: usize,
    pub group_size: usize,
    /// cases shown per prompt
    pub cases_k: usize,
    pub train_context: TrainContext,
    /// μ: gradient steps per batch of rollouts
    pub updates_per_batch: usize,
    /// sequences per forward/backward in the update (gradients accumulate across them)
    pub micro_batch_rows: usize,
    pub device: DeviceChoice,
    pub sample_every: usize,
    pub checkpoint_every: usize,
    pub eval_every: usize,
    pub rollout: SamplingConfig,
    pub loss: LossSection,
    pub optim: AdamWConfig,
    pub judge: JudgeConfig,
    /// extra variables for the model's chat template (TRL's `chat_template_kwargs`), e.g.
    /// `enable_thinking = false` for Qwen3
    pub chat_template_kwargs: toml::Table,
    /// a Jinja chat template file to render prompts with instead of the model's (TRL's
    /// `chat_template_path`); the saved model keeps its own
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "models/default".into(),
            spec: "models/spec/default.toml".into(),
            prompts: "models/prompts/train.jsonl".into(),
            eval_prompts: Some("models/prompts/heldout.jsonl".into()),
            eval_limit: 0,
            eval_temperature: 1.0,
            eval_samples: 8,
            out_dir: "runs/default".into(),
            seed: 0,
            steps: 30,
            prompts_per_step: 8,
            group_size: 8,
            cases_k: 2,
            train_context: TrainContext::Raw,
            updates_per_batch: 1,
            micro_batch_rows: 16,
            device: DeviceChoice::Auto,
            sample_every: 10,
            checkpoint_every: 10,
            eval_every: 0,
            rollout: SamplingConfig {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: 48,
            },
            loss: LossSection::default(),
            optim: AdamWConfig {
                lr: 5e-4,
                warmup_steps: 2,
                total_steps: 30,
                ..AdamWConfig::default()
            },
            judge: JudgeConfig::default(),
            chat_template_kwargs: toml::Table::new(),
            chat_template: None,
        }
    }
}

impl TrainConfig {
    /// `chat_template_kwargs` as the JSON map the chat template takes.
    pub fn chat_template_kwargs_json(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        match serde_json::to_value(&self.chat_template_kwargs)
            .context("train config field `chat_template_kwargs`")?
        {
            serde_json::Value::Object(map) => Ok(map),
            other => anyhow::bail!(
                "train config field `chat_template_kwargs` must be a table, got {other}"
            ),
        }
    }

    /// Defaults, then the TOML file, then each `key=value` override (TOML syntax for values,
    /// bare strings allowed), then validation.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            toml::Table::try_from(TrainConfig::default()).context("default config")?;
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let file: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{}: not valid TOML", p.display()))?;
            merge(&mut table, file);
        }
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .with_context(|| format!("--set {o}: expected key=value"))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            set_path(&mut table, key.trim(), value).with_context(|| format!("--set {o}"))?;
        }
        let src = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let cfg: TrainConfig = table
            .try_into()
            .with_context(|| format!("{src}: invalid train config"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.group_size >= 2,
            "group_size must be ≥ 2 (group-relative advantages), got {}",
            self.group_size
        );
        anyhow::ensure!(self.prompts_per_step >= 1, "prompts_per_step must be ≥ 1");
        anyhow::ensure!(
            self.updates_per_batch >= 1,
            "updates_per_batch (μ) must be ≥ 1"
        );
        anyhow::ensure!(
            self.rollout.max_new_tokens >= 1,
            "rollout.max_new_tokens must be ≥ 1"
        );
        anyhow::ensure!(
            self.rollout.temperature > 0.0,
            "rollout.temperature must be > 0 (log-probs use the sampling temperature)"
        );
        anyhow::ensure!(self.loss.beta >= 0.0, "loss.beta must be ≥ 0");
        if let Some(d) = self.loss.delta {
            anyhow::ensure!(
                d.is_finite() && d > 1.0 + self.loss.epsilon_high,
                "loss.delta = {d} must be > 1 + loss.epsilon_high = {} (two-sided clipping caps the ratio above the clip range)",
                1.0 + self.loss.epsilon_high
            );
        }
        Ok(())
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts = key.split('.').peekable();
    let mut cur = table;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), value);
            return Ok(());
        }
        let next = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = next
            .as_table_mut()
            .with_context(|| format!("`{p}` is not a section"))?;
    }
    Ok(())
}
