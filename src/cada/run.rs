//! `cada train`: the run around the loop — outputs, progress, evaluation before/after,
//! checkpoints (atomic; bit-identical resume), the final model and the plot.
//!
//! Run directory: `config.toml`, `metrics.jsonl` (one line per step), `samples.jsonl`,
//! `checkpoint/` (model + AdamW state + RNG + data position + config), `eval_before.json`,
//! `eval_after.json`, `final/` (a Hugging Face model directory), `metrics.png`.

use super::config::TrainConfig;
use super::data::load_prompts;
use super::evaluate::{evaluate_model, EvalOptions};
use super::spec::load_spec;
use super::trainer::{LoopState, Trainer};
use crate::backend::Backend;
use crate::model::load::LoadedModel;
use crate::model::weights::Params;
use crate::train::checkpoint::{load_checkpoint, save_checkpoint, NamedTensor};
use crate::train::optimizer::AdamWState;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

pub struct TrainSummary {
    pub steps: usize,
    pub first_reward: f64,
    pub last_reward: f64,
    pub before: Option<super::eval::EvalReport>,
    pub after: Option<super::eval::EvalReport>,
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("cannot write {}", path.display()))
}

/// Keeps only the lines of a JSONL log whose `step` is ≤ `step` (a resumed run re-runs the rest).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_f64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let kept: String = kept.iter().map(|l| format!("{l}\n")).collect();
    crate::util::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

fn save_run_checkpoint<B: Backend>(t: &Trainer<B>, dir: &Path) -> Result<()> {
    let be = t.be;
    let spec = Params::spec(&t.model.cfg);
    let mut tensors: Vec<NamedTensor> = Vec::new();
    for (s, p) in spec.tensors().into_iter().zip(t.model.params.tensors()) {
        tensors.push((s.name.clone(), s.shape.clone(), be.download(p)?));
    }
    let st = t.opt.state_to_host(be)?;
    for (i, s) in spec.tensors().into_iter().enumerate() {
        tensors.push((
            format!("adamw.m.{}", s.name),
            s.shape.clone(),
            st.m[i].clone(),
        ));
        tensors.push((
            format!("adamw.v.{}", s.name),
            s.shape.clone(),
            st.v[i].clone(),
        ));
    }
    let meta = serde_json::json!({
        "loop": serde_json::to_value(&t.state)?,
        "adamw_step": st.step,
        "config": serde_json::to_value(&t.cfg)?,
    });
    save_checkpoint(dir, &tensors, &meta)
}

fn restore_checkpoint<B: Backend>(t: &mut Trainer<B>, dir: &Path) -> Result<()> {
    let (tensors, meta) = load_checkpoint(dir)?;
    let by_name: std::collections::HashMap<&str, &NamedTensor> =
        tensors.iter().map(|t| (t.0.as_str(), t)).collect();
    let spec = Params::spec(&t.model.cfg);
    let get = |name: &str| -> Result<&Vec<f32>> {
        by_name
            .get(name)
            .map(|t| &t.2)
            .with_context(|| format!("{}: checkpoint lacks tensor `{name}`", dir.display()))
    };
    let be = t.be;
    let mut m = Vec::new();
    let mut v = Vec::new();
    for (s, p) in spec.tensors().into_iter().zip(t.model.params.tensors_mut()) {
        *p = be.upload(get(&s.name)?)?;
        m.push(get(&format!("adamw.m.{}", s.name))?.clone());
        v.push(get(&format!("adamw.v.{}", s.name))?.clone());
    }
    let step = meta["adamw_step"]
        .as_u64()
        .with_context(|| format!("{}: meta.json lacks `adamw_step`", dir.display()))?;
    t.opt.state_from_host(be, &AdamWState { step, m, v })?;
    t.state = serde_json::from_value::<LoopState>(meta["loop"].clone())
        .with_context(|| format!("{}: meta.json field `loop`", dir.display()))?;
    Ok(())
}

/// Runs (or resumes) a CADA training run on backend `be`.
pub fn run_train<B: Backend>(
    be: &B,
    cfg: TrainConfig,
    resume: bool,
    show_progress: bool,
) -> Result<TrainSummary> {
    let out = cfg.out_dir.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut base: LoadedModel = crate::model::load::load_model(&cfg.model)?;
    if let Some(file) = &cfg.chat_template {
        base.chat = base
            .chat
            .with_template_file(file)
            .context("train config field `chat_template`")?;
    }
    base.chat.set_kwargs(cfg.chat_template_kwargs_json()?)?;
    let spec = load_spec(&cfg.spec)?;
    let prompts = load_prompts(&cfg.prompts)?;
    let eval_prompts = match &cfg.eval_prompts {
        Some(p) if !p.as_os_str().is_empty() => {
            let mut v = load_prompts(p)?;
            if cfg.eval_limit > 0 {
                v.truncate(cfg.eval_limit);
            }
            Some(v)
        }
        _ => None,
    };
    let metrics_path = out.join("metrics.jsonl");
    let samples_path = out.join("samples.jsonl");
    let ckpt_dir = out.join("checkpoint");
    if !resume {
        std::fs::write(
            out.join("config.toml"),
            toml::to_string_pretty(&cfg).context("serialising the config")?,
        )?;
        for p in [&metrics_path, &samples_path] {
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
    }
    let mut t = Trainer::new(be, cfg.clone(), &base, spec, prompts)?;
    if resume {
        restore_checkpoint(&mut t, &ckpt_dir)
            .with_context(|| format!("resuming from {}", ckpt_dir.display()))?;
        truncate_log(&metrics_path, t.state.step)?;
        truncate_log(&samples_path, t.state.step)?;
        eprintln!("resumed {} at step {}", out.display(), t.state.step);
    }
    let eval_opts = EvalOptions {
        temperature: cfg.eval_temperature,
        max_new_tokens: cfg.rollout.max_new_tokens,
        batch_size: 64,
        seed: cfg.seed,
        samples: cfg.eval_samples,
    };
    let before = match (&eval_prompts, resume) {
        (Some(ep), false) => {
            let r = evaluate_model(be, &t.model, &base, ep, &eval_opts)?;
            std::fs::write(
                out.join("eval_before.json"),
                serde_json::to_string_pretty(&r)?,
            )?;
            eprintln!("before training (held-out):\n{}", r.to_text());
            Some(r)
        }
        _ => None,
    };

    let bar = if show_progress {
        indicatif::ProgressBar::new(cfg.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("static template"),
    );
    bar.set_position(t.state.step as u64);
    let (mut first_reward, mut last_reward) = (f64::NAN, f64::NAN);
    while t.state.step < cfg.steps {
        let m = t.step()?;
        let step = t.state.step;
        let r = m["reward_mean"].as_f64().unwrap_or(f64::NAN);
        if first_reward.is_nan() {
            first_reward = r;
        }
        last_reward = r;
        append_line(&metrics_path, &serde_json::to_string(&m)?)?;
        let line = step_line(&m, cfg.steps);
        // indicatif draws nothing (println included) when stderr is not a terminal
        if !bar.is_hidden() {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
        bar.set_message(format!(
            "reward {:+.3} kl {:.4} entropy {:.2} harmful {:.2} over-refusal {:.2} {:.0} tok/s",
            r,
            m["kl"].as_f64().unwrap_or(0.0),
            m["entropy"].as_f64().unwrap_or(0.0),
            m["rollout_harmful_compliance"].as_f64().unwrap_or(0.0),
            m["rollout_over_refusal"].as_f64().unwrap_or(0.0),
            m["tokens_per_s"].as_f64().unwrap_or(0.0)
        ));
        bar.inc(1);
        if cfg.sample_every > 0 && step % cfg.sample_every == 0 {
            write_samples(&mut t, &samples_path, step)?;
        }
        if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0) || step == cfg.steps {
            save_run_checkpoint(&t, &ckpt_dir)?;
        }
    }
    bar.finish();
    let host = t.model.to_host(be)?;
    crate::model::save::save_model_dir(
        &out.join("final"),
        &base.cfg,
        &host,
        &base.tokenizer,
        &base.tokenizer_config,
    )?;
    let after = match &eval_prompts {
        Some(ep) => {
            let r = evaluate_model(be, &t.model, &base, ep, &eval_opts)?;
            std::fs::write(
                out.join("eval_after.json"),
                serde_json::to_string_pretty(&r)?,
            )?;
            eprintln!("after training (held-out):\n{}", r.to_text());
            Some(r)
        }
        None => None,
    };
    if let Err(e) = super::plot::plot_metrics(&metrics_path, &out.join("metrics.png")) {
        eprintln!(
            "warning: could not draw {}: {e:#}",
            out.join("metrics.png").display()
        );
    }
    Ok(TrainSummary {
        steps: t.state.step,
        first_reward,
        last_reward,
        before,
        after,
    })
}

/// Greedy completions for the first few prompts of the current batch order, for reading.
fn write_samples<B: Backend>(t: &mut Trainer<B>, path: &Path, step: usize) -> Result<()> {
    let items: Vec<_> = t.prompts.iter().take(4).cloned().collect();
    let opts = EvalOptions {
        temperature: 0.0,
        max_new_tokens: t.cfg.rollout.max_new_tokens,
        batch_size: 4,
        seed: 0,
        samples: 1,
    };
    let outs = super::evaluate::complete_prompts(t.be, &t.model, t.base, &items, &opts)?;
    for (it, c) in items.iter().zip(outs) {
        let line = serde_json::json!({"step": step, "prompt": it.prompt, "label": it.label, "completion": c});
        append_line(path, &line.to_string())?;
    }
    Ok(())
}

/// One log line per step, after llm.c's: where the time went, throughput and MFU.
pub fn step_line(m: &serde_json::Map<String, serde_json::Value>, steps: usize) -> String {
    let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let ms = |k: &str| 1e3 * f(k);
    let mfu = match m.get("mfu").and_then(|v| v.as_f64()) {
        Some(x) => format!("{:.1}% MFU", 100.0 * x),
        None => format!("{:.3} TFLOP/s", f("train_tflops")),
    };
    format!(
        "step {:>4}/{steps} | reward {:+.3} | loss {:+.4} | kl {:.4} | norm {:.3} | lr {:.2e} | \
         {:.0} ms (rollout {:.0}, ref {:.0}, train {:.0}) | {:.0} tok/s (rollout {:.0}, train {:.0}) | {mfu}",
        f("step") as u64,
        f("reward_mean"),
        f("loss"),
        f("kl"),
        f("grad_norm"),
        f("lr"),
        ms("time_rollout_s") + ms("time_reference_s") + ms("time_train_s"),
        ms("time_rollout_s"),
        ms("time_reference_s"),
        ms("time_train_s"),
        f("tokens_per_s"),
        f("rollout_tokens_per_s"),
        f("train_tokens_per_s"),
    )
}
