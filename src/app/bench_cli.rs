//! `cada bench …`: the subcommands' arguments and bodies (main.rs only dispatches here).

use super::DeviceChoice;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Every kernel at the shapes of `cada bench shapes`, timed (CUDA events on a GPU, L2
    /// flushed between repetitions) against the copy and GEMM rooflines measured in the same run
    Kernels {
        /// shape set (default: full on a GPU, smoke on the CPU)
        #[arg(long, value_enum)]
        set: Option<crate::bench::shapes::ShapeSet>,
        /// only ids containing this text, e.g. `attention.fwd/hd128`
        #[arg(long)]
        filter: Option<String>,
        /// write the report here (JSON)
        #[arg(long)]
        json: Option<PathBuf>,
        /// compare with this earlier report; exit non-zero on a regression
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// slowdown allowed against the baseline, e.g. 5% or 0.05
        #[arg(long, default_value = "5%")]
        max_regression: String,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// One CADA step split into rollout, reference log-probs and training: tokens/s, MFU, memory
    Step {
        /// a model directory or .gguf (its weights are used)
        #[arg(long, conflicts_with = "shape")]
        model: Option<PathBuf>,
        /// a random-weight model of a known shape: smollm2-135m, qwen2.5-0.5b, qwen3-0.6b, tiny
        #[arg(long)]
        shape: Option<String>,
        #[arg(long, default_value_t = 8)]
        prompts: usize,
        /// rollouts per prompt (G)
        #[arg(long, default_value_t = 8)]
        group: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 256)]
        new_tokens: usize,
        #[arg(long, default_value_t = 16)]
        micro_batch_rows: usize,
        #[arg(long, default_value_t = 2)]
        repeats: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        /// also write the rollout and train times as a bench report (ids `rollout/<name>/…`,
        /// `train_step/<name>/…`, matched by bench/peers.py --hf)
        #[arg(long)]
        records: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Whole-model forward, forward+backward and batched decode tokens/s
    Model {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Print the shapes of a set as JSON (the PyTorch peer script reads them)
    Shapes {
        #[arg(long, value_enum, default_value = "full")]
        set: crate::bench::shapes::ShapeSet,
    },
    /// Our/peer ratios from two reports of one run (ours and bench/peers.py's)
    Report {
        /// one or more of our reports (kernels, step records); their records are pooled
        #[arg(long, required = true, num_args = 1..)]
        ours: Vec<PathBuf>,
        /// one or more peer reports (bench/peers.py); their records are pooled
        #[arg(long, required = true, num_args = 1..)]
        peers: Vec<PathBuf>,
    },
}

fn write_json<T: serde::Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    if let Some(p) = path {
        crate::util::write_atomic(p, serde_json::to_string_pretty(value)?.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// Runs one `cada bench` subcommand.
pub fn run(what: BenchCommand) -> Result<()> {
    use crate::bench::report::{compare, parse_threshold, peer_table_markdown, Report};
    match what {
        BenchCommand::Kernels {
            set,
            filter,
            json,
            baseline,
            max_regression,
            device,
        } => {
            // parsed before the (long) run so a typo fails at once
            let threshold = parse_threshold(&max_regression)?;
            let base = baseline.as_deref().map(Report::load).transpose()?;
            let report = crate::bench::run_on_device(device, set, filter, json.clone())?;
            print!("{}", report.to_table());
            if let Some(p) = &json {
                eprintln!("wrote {}", p.display()); // saved by the run, after every record
            }
            if let Some(base) = base {
                let gate = compare(&report, &base, threshold)?;
                print!("{}", gate.to_text());
                if !gate.passed() {
                    anyhow::bail!("bench kernels: slower than the baseline (see above)");
                }
            }
        }
        BenchCommand::Step {
            model,
            shape,
            prompts,
            group,
            prompt_len,
            new_tokens,
            micro_batch_rows,
            repeats,
            json,
            records,
            device,
        } => {
            let label = shape.clone().unwrap_or_else(|| {
                model
                    .as_deref()
                    .and_then(|p| p.file_stem())
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "model".into())
            });
            let loaded = model
                .as_deref()
                .map(crate::model::load::load_model)
                .transpose()?;
            let cfg = match (&loaded, &shape) {
                (Some(m), _) => m.cfg.clone(),
                (None, Some(s)) => super::bench_step::shape_config(s)?,
                (None, None) => anyhow::bail!("bench step: pass --model DIR or --shape NAME"),
            };
            let r = super::run_on(
                device,
                super::bench_step::StepBench {
                    cfg: &cfg,
                    params: loaded.as_ref().map(|m| &m.params),
                    prompts,
                    group,
                    prompt_len,
                    new_tokens,
                    micro_batch_rows,
                    repeats,
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            write_json(&json, &r)?;
            if let Some(p) = records {
                r.to_report(&label).save(&p)?;
            }
        }
        BenchCommand::Model {
            model,
            batch,
            seq,
            new_tokens,
            repeats,
            json,
            device,
        } => {
            let m = crate::model::load::load_model(&model)?;
            let r = super::run_on(
                device,
                super::bench::ModelBench {
                    model: &m,
                    batch,
                    seq,
                    new_tokens,
                    repeats,
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            write_json(&json, &r)?;
        }
        BenchCommand::Shapes { set } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::bench::shapes::shapes(set))?
            );
        }
        BenchCommand::Report { ours, peers } => {
            let pooled = |files: &[PathBuf]| -> Result<Report> {
                let mut r = Report::load(&files[0])?;
                for extra in &files[1..] {
                    r.records.extend(Report::load(extra)?.records);
                }
                Ok(r)
            };
            print!("{}", peer_table_markdown(&pooled(&ours)?, &pooled(&peers)?));
        }
    }
    Ok(())
}
