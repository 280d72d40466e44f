//! The `cada` command line: parse, call the library, print. No logic lives here.

use anyhow::{Context, Result};
use cada::app::{self, DeviceChoice};
use cada::train::generate::SamplingConfig;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cada",
    version,
    about = "CADA (Case-Augmented Deliberative Alignment) training engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Every kernel at the shapes of `cada bench shapes`, timed (CUDA events on a GPU, L2
    /// flushed between repetitions) against the copy and GEMM rooflines measured in the same run
    Kernels {
        /// shape set (default: full on a GPU, smoke on the CPU)
        #[arg(long, value_enum)]
        set: Option<cada::bench::shapes::ShapeSet>,
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
        /// a random-weight model of a known shape: smollm2-135m, qwen2.5-0.5b, tiny
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
        set: cada::bench::shapes::ShapeSet,
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

#[derive(Subcommand)]
enum Command {
    /// Print the architecture, parameter count, dtype and a training memory estimate
    Info {
        #[arg(long)]
        model: PathBuf,
        /// tokens per training batch for the activation-memory estimate
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
    },
    /// Print the token ids of a text as JSON
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: String,
        /// do not add the tokenizer's special tokens (e.g. BOS)
        #[arg(long)]
        no_special: bool,
    },
    /// Stream a completion
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// apply the model's chat template
        #[arg(long)]
        chat: bool,
        /// system message (with --chat)
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 = greedy (deterministic)
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// 0 = off
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Benchmarks: kernels against rooflines and a baseline, a whole CADA step, whole models
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Convert a GGUF file into a Hugging Face model directory
    Convert {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: cada::model::convert::SaveDtype,
    },
    /// CADA training (GRPO on self-generated deliberation); no arguments = the default demo run
    Train {
        /// TOML config (every field optional; see README)
        #[arg(long)]
        config: Option<PathBuf>,
        /// override any config field: --set loss.beta=0 --set rollout.temperature=0.9
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// continue the run in this directory from its last checkpoint
        #[arg(long)]
        resume: Option<PathBuf>,
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum)]
        device: Option<DeviceChoice>,
        /// no progress bar
        #[arg(long)]
        quiet: bool,
    },
    /// Harmful-compliance and over-refusal rates of a model on a prompt set
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompts: PathBuf,
        /// also write the report (with every completion) as JSON
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// completions per prompt (use > 1 with --temperature > 0)
        #[arg(long, default_value_t = 1)]
        samples: usize,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Supervised fine-tuning on (prompt, completion) JSONL; the prompt goes through the chat template
    Sft {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-4)]
        lr: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// DPO (sigmoid loss, frozen reference = the starting model) on (prompt, chosen, rejected) JSONL
    Dpo {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        steps: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-5)]
        lr: f32,
        #[arg(long, default_value_t = 0.1)]
        beta: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Rebuild the default demonstration model (models/default) and prompt sets from scratch
    BuildDefaultModel {
        #[arg(long, default_value = "models/default")]
        out: PathBuf,
        #[arg(long, default_value_t = 400)]
        sft_steps: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Per-token log-probs of completions given prompts (JSONL in, JSONL out)
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// default: stdout
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { model, tokens } => {
            let info = app::info::model_info(&model)?;
            println!("{}", app::info::format_info(&info, tokens));
        }
        Command::Tokenize {
            model,
            text,
            no_special,
        } => {
            let m = cada::model::load::load_model(&model)?;
            let ids = m.tokenizer.encode(&text, !no_special)?;
            println!("{}", serde_json::to_string(&ids)?);
        }
        Command::Generate {
            model,
            prompt,
            chat,
            system,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            device,
        } => {
            let m = cada::model::load::load_model(&model)?;
            let sampling = SamplingConfig {
                temperature,
                top_p,
                top_k,
                max_new_tokens,
            };
            let task = app::run_generate::GenerateTask {
                model: &m,
                prompt,
                chat,
                system,
                sampling,
                seed,
                stream: true,
            };
            let out = app::run_on(device, task)?;
            println!();
            eprintln!(
                "[{} prompt tokens, {} new tokens in {:.2} s: {:.1} tok/s]",
                out.prompt_tokens,
                out.tokens,
                out.seconds,
                out.tokens as f64 / out.seconds.max(1e-9)
            );
        }
        Command::Score {
            model,
            input,
            output,
            temperature,
            device,
        } => {
            let m = cada::model::load::load_model(&model)?;
            let items = app::score::read_score_input(&input, &m)?;
            let results = app::run_on(
                device,
                app::score::ScoreTask {
                    model: &m,
                    items,
                    temperature,
                },
            )?;
            let mut text = String::new();
            for r in &results {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
            match output {
                Some(p) => std::fs::write(&p, text)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
        }
        Command::Bench { what } => run_bench(what)?,
        Command::Convert { from, to, dtype } => {
            let secs = cada::model::convert::run_convert(&from, &to, dtype)?;
            eprintln!(
                "converted {} → {} in {secs:.2} s",
                from.display(),
                to.display()
            );
        }
        Command::Train {
            config,
            mut sets,
            resume,
            model,
            steps,
            out,
            seed,
            device,
            quiet,
        } => {
            // named flags are shorthands for --set
            if let Some(m) = model {
                sets.push(format!("model=\"{}\"", m.display()));
            }
            if let Some(s) = steps {
                sets.push(format!("steps={s}"));
                sets.push(format!("optim.total_steps={s}"));
            }
            if let Some(o) = out {
                sets.push(format!("out_dir=\"{}\"", o.display()));
            }
            if let Some(s) = seed {
                sets.push(format!("seed={s}"));
            }
            if let Some(d) = device {
                sets.push(format!(
                    "device=\"{}\"",
                    serde_json::to_value(d)?.as_str().unwrap_or("auto")
                ));
            }
            let cfg_path = match (&resume, &config) {
                (Some(dir), _) => Some(dir.join("config.toml")),
                (None, c) => c.clone(),
            };
            let cfg = cada::cada::config::TrainConfig::load(cfg_path.as_deref(), &sets)?;
            let summary = app::run_on(
                cfg.device,
                app::train::TrainTask {
                    cfg,
                    resume: resume.is_some(),
                    progress: !quiet,
                },
            )?;
            eprintln!("{}", app::train::format_summary(&summary));
        }
        Command::Eval {
            model,
            prompts,
            json,
            max_new_tokens,
            temperature,
            seed,
            samples,
            device,
        } => {
            let m = cada::model::load::load_model(&model)?;
            let items = cada::cada::data::load_prompts(&prompts)?;
            let opts = cada::cada::evaluate::EvalOptions {
                temperature,
                max_new_tokens,
                batch_size: 64,
                seed,
                samples,
            };
            let report = app::run_on(
                device,
                app::train::EvalTask {
                    model: &m,
                    items,
                    opts,
                },
            )?;
            println!("{}", report.to_text());
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
        }
        Command::Sft {
            model,
            data,
            out,
            steps,
            batch_size,
            lr,
            seed,
            device,
        } => {
            let m = cada::model::load::load_model(&model)?;
            let pairs = cada::cada::data::load_sft(&data)?;
            app::run_on(
                device,
                app::train::SftTask {
                    model: &m,
                    pairs,
                    out,
                    steps,
                    batch_size,
                    lr,
                    seed,
                },
            )?;
        }
        Command::Dpo {
            model,
            data,
            out,
            steps,
            batch_size,
            lr,
            beta,
            seed,
            device,
        } => {
            let m = cada::model::load::load_model(&model)?;
            let triples = cada::cada::data::load_dpo(&data)?;
            app::run_on(
                device,
                app::train::DpoTask {
                    model: &m,
                    triples,
                    out,
                    steps,
                    batch_size,
                    lr,
                    beta,
                    seed,
                },
            )?;
        }
        Command::BuildDefaultModel {
            out,
            sft_steps,
            seed,
            device,
        } => {
            let opts = cada::cada::default_model::BuildOptions {
                out,
                sft_steps,
                seed,
                ..Default::default()
            };
            app::run_on(device, app::train::BuildDefaultTask { opts })?;
        }
    }
    Ok(())
}

fn write_json<T: serde::Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    if let Some(p) = path {
        cada::util::write_atomic(p, serde_json::to_string_pretty(value)?.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

fn run_bench(what: BenchCommand) -> Result<()> {
    use cada::bench::report::{compare, parse_threshold, peer_table_markdown, Report};
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
            let report = cada::bench::run_on_device(device, set, filter, json.clone())?;
            print!("{}", report.to_table());
            if let Some(p) = &json {
                report.save(p)?;
                eprintln!("wrote {}", p.display());
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
                .map(cada::model::load::load_model)
                .transpose()?;
            let cfg = match (&loaded, &shape) {
                (Some(m), _) => m.cfg.clone(),
                (None, Some(s)) => app::bench_step::shape_config(s)?,
                (None, None) => anyhow::bail!("bench step: pass --model DIR or --shape NAME"),
            };
            let r = app::run_on(
                device,
                app::bench_step::StepBench {
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
            let m = cada::model::load::load_model(&model)?;
            let r = app::run_on(
                device,
                app::bench::ModelBench {
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
                serde_json::to_string_pretty(&cada::bench::shapes::shapes(set))?
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
