//! The CADA loop (../shared/CADA.md, "One CADA step"): deliberation contexts → G rollouts per
//! prompt → judge → group-relative advantages → clipped-ratio + k3-KL loss in the training
//! context → AdamW. Deterministic from the seed: every random draw comes from one ChaCha RNG that
//! is saved in each checkpoint, so a resumed run continues bit-identically.

use super::chat_data::context_ids;
use super::config::{JudgeConfig, TrainConfig, TrainContext};
use super::data::PromptItem;
use super::judge::{CommandJudge, Judge, JudgeItem, RuleJudge};
use super::retrieval::{deliberation_system_prompt, select_cases};
use super::seqlogp::{check_grads, seq_backward, seq_logprobs, seq_logprobs_no_grad, Seq};
use super::spec::Spec;
use crate::backend::Backend;
use crate::model::llama::Llama;
use crate::model::load::LoadedModel;
use crate::model::weights::{Params, TensorSpec};
use crate::train::generate::generate;
use crate::train::optimizer::AdamW;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// One rollout: a prompt's contexts and one sampled completion.
pub struct Rollout {
    pub prompt: usize,
    pub train_ctx: Vec<u32>,
    pub completion: Vec<u32>,
    pub text: String,
    pub stopped: bool,
}

/// Everything about a run that a checkpoint must restore.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct LoopState {
    pub step: usize,
    pub rng: ChaCha8Rng,
    pub order: Vec<usize>,
    pub pos: usize,
}

pub struct Trainer<'a, B: Backend> {
    pub be: &'a B,
    pub cfg: TrainConfig,
    pub base: &'a LoadedModel,
    pub model: Llama<B>,
    reference: Option<Llama<B>>,
    pub spec: Spec,
    pub prompts: Vec<PromptItem>,
    judge: Box<dyn Judge>,
    pub opt: AdamW<B>,
    pub state: LoopState,
    names: Vec<String>,
}

pub fn build_judge(cfg: &JudgeConfig) -> Result<Box<dyn Judge>> {
    Ok(match cfg {
        JudgeConfig::Rule(r) => Box::new(RuleJudge::new(r.clone())),
        JudgeConfig::Model {
            model,
            good,
            bad,
            margin_scale,
        } => Box::new(super::model_judge::ModelJudge::new(
            model,
            good,
            bad,
            *margin_scale,
        )?),
        JudgeConfig::Command { command, timeout_s } => Box::new(CommandJudge::new(
            command.clone(),
            std::time::Duration::from_secs_f64(*timeout_s),
        )),
    })
}

impl<'a, B: Backend> Trainer<'a, B> {
    pub fn new(
        be: &'a B,
        cfg: TrainConfig,
        base: &'a LoadedModel,
        spec: Spec,
        prompts: Vec<PromptItem>,
    ) -> Result<Self> {
        if prompts.is_empty() {
            bail!("{}: no training prompts", cfg.prompts.display());
        }
        let model = Llama::from_host(be, base.cfg.clone(), &base.params)?;
        // β = 0 skips the reference model entirely (no copy, no forward).
        let reference = if cfg.loss.beta > 0.0 {
            Some(Llama::from_host(be, base.cfg.clone(), &base.params)?)
        } else {
            None
        };
        let lens: Vec<usize> = model.params.tensors().iter().map(|t| be.len(t)).collect();
        let opt = AdamW::new(be, &lens, cfg.optim)?;
        let judge = build_judge(&cfg.judge)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.shuffle(&mut rng);
        let names = Params::spec(&base.cfg)
            .tensors()
            .iter()
            .map(|t: &&TensorSpec| t.name.clone())
            .collect();
        Ok(Trainer {
            be,
            cfg,
            base,
            model,
            reference,
            spec,
            prompts,
            judge,
            opt,
            state: LoopState {
                step: 0,
                rng,
                order,
                pos: 0,
            },
            names,
        })
    }

    /// The next `prompts_per_step` prompt indices (reshuffled at each epoch).
    fn next_prompts(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        while out.len() < self.cfg.prompts_per_step {
            if self.state.pos == self.state.order.len() {
                self.state.order.shuffle(&mut self.state.rng);
                self.state.pos = 0;
            }
            out.push(self.state.order[self.state.pos]);
            self.state.pos += 1;
        }
        out
    }

    /// Samples G completions per prompt in the deliberation context.
    pub fn rollouts(&mut self, batch: &[usize]) -> Result<Vec<Rollout>> {
        let g = self.cfg.group_size;
        let max_ctx = self
            .base
            .cfg
            .max_sequence_len()
            .saturating_sub(self.cfg.rollout.max_new_tokens);
        let mut sample_ctx = Vec::new();
        let mut train_ctx = Vec::new();
        for &i in batch {
            let item = &self.prompts[i];
            let cases = select_cases(
                &self.spec,
                &item.prompt,
                item.category.as_deref(),
                self.cfg.cases_k,
                &mut self.state.rng,
            );
            let system = deliberation_system_prompt(&self.spec, &cases);
            let delib = context_ids(self.base, Some(&system), item)?;
            if delib.len() > max_ctx {
                bail!(
                    "{}: prompt {} in its deliberation context is {} tokens; with rollout.max_new_tokens {} it exceeds the model's context of {} tokens",
                    self.cfg.prompts.display(), i + 1, delib.len(), self.cfg.rollout.max_new_tokens, self.base.cfg.max_sequence_len()
                );
            }
            let train = match self.cfg.train_context {
                TrainContext::Raw => context_ids(self.base, None, item)?,
                TrainContext::Deliberation => delib.clone(),
            };
            for _ in 0..g {
                sample_ctx.push(delib.clone());
                train_ctx.push(train.clone());
            }
        }
        let stops = self.base.stop_ids();
        let gen = generate(
            self.be,
            &self.model,
            &sample_ctx,
            &self.cfg.rollout,
            &stops,
            &mut self.state.rng,
            |_, _| {},
        )?;
        let mut out = Vec::new();
        for (k, (toks, stopped)) in gen.tokens.into_iter().zip(gen.stopped).enumerate() {
            let visible: Vec<u32> = toks
                .iter()
                .copied()
                .filter(|t| !stops.contains(t))
                .collect();
            let text = self.base.tokenizer.decode(&visible, true)?;
            out.push(Rollout {
                prompt: batch[k / g],
                train_ctx: train_ctx[k].clone(),
                completion: toks,
                text,
                stopped,
            });
        }
        Ok(out)
    }

    pub fn judge(&mut self, rollouts: &[Rollout]) -> Result<Vec<super::judge::JudgeScore>> {
        let items: Vec<JudgeItem> = rollouts
            .iter()
            .map(|r| {
                let p = &self.prompts[r.prompt];
                JudgeItem {
                    prompt: p.prompt.clone(),
                    completion: r.text.clone(),
                    label: p.label,
                    conversation: p.conversation.clone(),
                }
            })
            .collect();
        let scores = self.judge.score(&items).with_context(|| {
            format!(
                "judge `{}` failed at step {}",
                self.judge.name(),
                self.state.step + 1
            )
        })?;
        if scores.len() != items.len() {
            bail!(
                "judge `{}` returned {} scores for {} completions",
                self.judge.name(),
                scores.len(),
                items.len()
            );
        }
        Ok(scores)
    }

    fn train_seqs(rollouts: &[Rollout]) -> Vec<Seq> {
        rollouts
            .iter()
            .map(|r| Seq {
                ctx: r.train_ctx.clone(),
                completion: r.completion.clone(),
            })
            .collect()
    }

    /// One CADA step. Returns the metrics line.
    pub fn step(&mut self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let be = self.be;
        let step_no = self.state.step + 1;
        let t0 = Instant::now();
        let batch = self.next_prompts();
        let range = crate::profile::range_with(|| format!("step {step_no} rollout"));
        let rollouts = self.rollouts(&batch)?;
        let t_rollout = t0.elapsed().as_secs_f64();
        drop(range);
        let range = crate::profile::range_with(|| format!("step {step_no} judge"));
        let scores = self.judge(&rollouts)?;
        drop(range);
        let rewards: Vec<f32> = scores.iter().map(|s| s.reward).collect();
        // on the device: the per-chunk loss reads its rows of it there
        let mut adv = be.zeros(rewards.len())?;
        let adv_stats = be
            .grpo_advantages(
                &mut adv,
                &be.upload(&rewards)?,
                self.cfg.group_size,
                self.cfg.loss.scale_rewards,
                self.cfg.loss.reward_std,
                self.cfg.loss.advantage_eps,
            )
            .with_context(|| format!("step {step_no}: advantages"))?;

        let seqs = Self::train_seqs(&rollouts);
        let rows = rollouts.len();
        let max_len = rollouts
            .iter()
            .map(|r| r.completion.len())
            .max()
            .unwrap_or(0);
        // Mask: completion tokens only; optionally not the truncated ones.
        let lc = max_len.max(1);
        let mut mask = vec![0f32; rows * lc];
        for (b, r) in rollouts.iter().enumerate() {
            if self.cfg.loss.mask_truncated && !r.stopped {
                continue;
            }
            for j in 0..r.completion.len() {
                mask[b * lc + j] = 1.0;
            }
        }

        // Reference log-probs (frozen starting model), in the training context.
        let mb = self.cfg.micro_batch_rows.max(1);
        let chunks: Vec<(usize, usize)> = (0..rows)
            .step_by(mb)
            .map(|r0| (r0, (r0 + mb).min(rows)))
            .collect();
        let t1 = Instant::now();
        let range = crate::profile::range_with(|| format!("step {step_no} reference"));
        let mut ref_lp = vec![0f32; rows * lc];
        if let Some(r) = &self.reference {
            for &(r0, r1) in &chunks {
                let sl = seq_logprobs_no_grad(be, r, &seqs[r0..r1], self.cfg.rollout.temperature)?;
                relayout_into(&mut ref_lp[r0 * lc..r1 * lc], &sl.logp, r1 - r0, sl.lc, lc);
            }
        }
        let t_ref = t1.elapsed().as_secs_f64();
        drop(range);

        // The update, in micro-batches of rows: each chunk's forward is kept only for its own
        // backward, gradients accumulate, and the loss is normalised over the whole batch (the
        // per-chunk loss normalises over the chunk; `chunk_weight` rescales it).
        let t2 = Instant::now();
        let range = crate::profile::range_with(|| format!("step {step_no} train"));
        let loss_cfg = self.cfg.loss.grpo(self.cfg.rollout.max_new_tokens);
        let total_tokens: f32 = mask.iter().sum();
        let mut old_lp = vec![0f32; rows * lc];
        let mut metrics = crate::backend::GrpoLossMetrics::default();
        let mut entropy_sum = 0.0f64;
        let mut info = None;
        for u in 0..self.cfg.updates_per_batch {
            let mut grads = self.model.zeros_like_params(be)?;
            let mut agg = crate::backend::GrpoLossMetrics::default();
            entropy_sum = 0.0;
            for &(r0, r1) in &chunks {
                let b = r1 - r0;
                let sb =
                    seq_logprobs(be, &self.model, &seqs[r0..r1], self.cfg.rollout.temperature)?;
                let mut lp = vec![0f32; b * lc];
                relayout_into(&mut lp, &sb.logp, b, sb.lc, lc);
                // With μ = 1 the old policy is the current one: ρ = 1 in value, not in gradient.
                if u == 0 {
                    old_lp[r0 * lc..r1 * lc].copy_from_slice(&lp);
                }
                let m = &mask[r0 * lc..r1 * lc];
                let chunk_tokens: f32 = m.iter().sum();
                let weight = match loss_cfg.loss_type {
                    crate::backend::LossType::Dapo => chunk_tokens / total_tokens.max(1.0),
                    _ => b as f32 / rows as f32,
                };
                let d_lp = be.upload(&lp)?;
                let d_old = be.upload(&old_lp[r0 * lc..r1 * lc])?;
                let d_ref = be.upload(&ref_lp[r0 * lc..r1 * lc])?;
                let d_mask = be.upload(m)?;
                let mut d_adv = be.zeros(b)?;
                be.copy(&mut d_adv, 0, &adv, r0, b)?;
                // forward and backward in one pass; the chunk's weight scales d(loss)/d(logp)
                let mut d_dlp = be.zeros(b * lc)?;
                let mc = be.grpo_loss_fused(
                    &mut d_dlp, &d_lp, &d_old, &d_ref, &d_mask, &d_adv, b, lc, &loss_cfg, weight,
                )?;
                if !mc.loss.is_finite() {
                    bail!("step {step_no}: the loss is {} (non-finite); update refused, last checkpoint kept", mc.loss);
                }
                let tw = chunk_tokens / total_tokens.max(1.0);
                // GSPO's clip ratios are shares of completions: weigh the chunks by rows
                let cw = match loss_cfg.importance_sampling {
                    crate::backend::ImportanceSampling::Token => tw,
                    crate::backend::ImportanceSampling::Sequence => b as f32 / rows as f32,
                };
                agg.loss += weight * mc.loss;
                agg.kl_mean += tw * mc.kl_mean;
                agg.clip_ratio_low += cw * mc.clip_ratio_low;
                agg.clip_ratio_high += cw * mc.clip_ratio_high;
                agg.clip_ratio_region += cw * mc.clip_ratio_region;
                agg.tokens += mc.tokens;
                let dl = be.download(&d_dlp)?;
                let mut dl_chunk = vec![0f32; b * sb.lc];
                relayout_into(&mut dl_chunk, &dl, b, lc, sb.lc);
                seq_backward(
                    be,
                    &self.model,
                    &sb,
                    &seqs[r0..r1],
                    &dl_chunk,
                    self.cfg.rollout.temperature,
                    &mut grads,
                )?;
                let mut ent = vec![0f32; b * lc];
                relayout_into(&mut ent, &sb.entropy, b, sb.lc, lc);
                entropy_sum += ent
                    .iter()
                    .zip(m)
                    .map(|(e, mm)| (e * mm) as f64)
                    .sum::<f64>();
            }
            metrics = agg;
            check_grads(be, &self.names, &grads, step_no)?;
            let mut params = self.model.params.tensors_mut();
            let mut gs = grads.tensors_mut();
            info = Some(
                self.opt
                    .step(be, &mut params, &mut gs)
                    .with_context(|| format!("step {step_no}"))?,
            );
        }
        let entropy_mean = (entropy_sum / total_tokens.max(1.0) as f64) as f32;
        let t_train = t2.elapsed().as_secs_f64();
        drop(range);
        self.state.step = step_no;
        let info = info.expect("updates_per_batch ≥ 1");

        // ---- metrics (../shared/CADA.md step 9) ----
        let gen_tokens: usize = rollouts.iter().map(|r| r.completion.len()).sum();
        let train_tokens: usize = rollouts
            .iter()
            .map(|r| r.train_ctx.len() + r.completion.len())
            .sum();
        let n = rows as f32;
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: f64| {
            m.insert(k.to_string(), serde_json::json!(v));
        };
        put("step", step_no as f64);
        put("reward_mean", adv_stats.reward_mean as f64);
        put("reward_std", adv_stats.reward_std as f64);
        put(
            "frac_reward_zero_std",
            adv_stats.frac_reward_zero_std as f64,
        );
        let mut terms: Vec<(String, f64)> = Vec::new();
        for s in &scores {
            for (k, v) in &s.terms {
                match terms.iter_mut().find(|(n, _)| n == k) {
                    Some(t) => t.1 += *v as f64,
                    None => terms.push((k.clone(), *v as f64)),
                }
            }
        }
        for (k, v) in terms {
            put(&format!("reward/{k}"), v / n as f64);
        }
        let (mut harm, mut harm_n, mut over, mut ben_n) = (0, 0, 0, 0);
        for (r, s) in rollouts.iter().zip(&scores) {
            match self.prompts[r.prompt].label {
                super::data::Label::Harmful => {
                    harm_n += 1;
                    harm += (!s.refused) as usize;
                }
                super::data::Label::Benign => {
                    ben_n += 1;
                    over += s.refused as usize;
                }
            }
        }
        put(
            "rollout_harmful_compliance",
            harm as f64 / harm_n.max(1) as f64,
        );
        put("rollout_over_refusal", over as f64 / ben_n.max(1) as f64);
        put("loss", metrics.loss as f64);
        put("kl", metrics.kl_mean as f64);
        put("entropy", entropy_mean as f64);
        put("clip_ratio_low", metrics.clip_ratio_low as f64);
        put("clip_ratio_high", metrics.clip_ratio_high as f64);
        put("clip_ratio_region", metrics.clip_ratio_region as f64);
        put("completion_len_mean", gen_tokens as f64 / n as f64);
        put("completion_len_max", max_len as f64);
        put(
            "completion_clipped_ratio",
            rollouts.iter().filter(|r| !r.stopped).count() as f64 / n as f64,
        );
        put("grad_norm", info.grad_norm as f64);
        put("lr", info.lr as f64);
        let total = t0.elapsed().as_secs_f64();
        put("time_rollout_s", t_rollout);
        put("time_reference_s", t_ref);
        put("time_train_s", t_train);
        put("tokens_per_s", (gen_tokens + train_tokens) as f64 / total);
        put(
            "rollout_tokens_per_s",
            gen_tokens as f64 / t_rollout.max(1e-9),
        );
        put(
            "train_tokens_per_s",
            train_tokens as f64 * self.cfg.updates_per_batch as f64 / t_train.max(1e-9),
        );
        // PaLM's count per sequence (LlamaConfig::train_flops): fwd+bwd per update, plus the
        // reference forward (1/3) when β > 0. Padding inside micro-batches is not counted.
        let per_batch: f64 = rollouts
            .iter()
            .map(|r| {
                self.base
                    .cfg
                    .train_flops(r.train_ctx.len() + r.completion.len())
            })
            .sum();
        let flops = per_batch
            * (self.cfg.updates_per_batch as f64
                + if self.reference.is_some() {
                    1.0 / 3.0
                } else {
                    0.0
                });
        let tflops = flops / (t_train + t_ref).max(1e-9) / 1e12;
        put("train_tflops", tflops);
        if let Some(peak) = be.dense_peak_tflops() {
            put("mfu", tflops / peak);
        }
        if let Some(b) = be.peak_memory_bytes() {
            put("peak_device_bytes", b as f64);
        }
        put("peak_rss_bytes", peak_rss_bytes() as f64);
        Ok(m)
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), 0 when unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Copies `[rows, from_lc]` into `[rows, to_lc]` (truncating or zero-padding each row).
fn relayout_into(dst: &mut [f32], src: &[f32], rows: usize, from_lc: usize, to_lc: usize) {
    let n = from_lc.min(to_lc);
    for b in 0..rows {
        dst[b * to_lc..b * to_lc + n].copy_from_slice(&src[b * from_lc..b * from_lc + n]);
    }
}
