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
        #[arg(long, required_unless_present = "messages")]
        prompt: Option<String>,
        /// a conversation to continue, rendered by the chat template: a JSON file holding a
        /// list of messages, or a prompt line's object ({"prompt": [...], "tools": [...]})
        #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "chat", "system"])]
        messages: Option<PathBuf>,
        /// apply the model's chat template
        #[arg(long)]
        chat: bool,
        /// system message (with --chat)
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        chat_template: app::ChatTemplateArgs,
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
        what: app::bench_cli::BenchCommand,
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
        #[command(flatten)]
        chat_template: app::ChatTemplateArgs,
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
        #[command(flatten)]
        chat_template: app::ChatTemplateArgs,
        /// train only on the tokens of the chat template's {% generation %} blocks (TRL's
        /// assistant_only_loss; needs a template with them, e.g. TRL's training templates)
        #[arg(long)]
        assistant_only_loss: bool,
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
        #[command(flatten)]
        chat_template: app::ChatTemplateArgs,
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
            messages,
            chat,
            system,
            chat_template,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            device,
        } => {
            let m = chat_template.load_model(&model)?;
            let sampling = SamplingConfig {
                temperature,
                top_p,
                top_k,
                max_new_tokens,
            };
            let input = match (messages, prompt) {
                (Some(file), _) => app::run_generate::GenerateInput::Conversation(
                    app::run_generate::read_conversation(&file)?,
                ),
                (None, Some(prompt)) if chat => {
                    app::run_generate::GenerateInput::Chat { system, prompt }
                }
                (None, Some(prompt)) => app::run_generate::GenerateInput::Text(prompt),
                (None, None) => anyhow::bail!("give --prompt or --messages"),
            };
            let task = app::run_generate::GenerateTask {
                model: &m,
                input,
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
        Command::Bench { what } => app::bench_cli::run(what)?,
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
            chat_template,
        } => {
            let m = chat_template.load_model(&model)?;
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
            chat_template,
            assistant_only_loss,
        } => {
            let m = chat_template.load_model(&model)?;
            let records = cada::cada::data::load_sft(&data)?;
            app::run_on(
                device,
                app::train::SftTask {
                    model: &m,
                    records,
                    assistant_only_loss,
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
            chat_template,
        } => {
            let m = chat_template.load_model(&model)?;
            let records = cada::cada::data::load_dpo(&data)?;
            app::run_on(
                device,
                app::train::DpoTask {
                    model: &m,
                    records,
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
