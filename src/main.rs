//! The `cada` command line: parse, call the library, print. No logic lives here.

use anyhow::{Context, Result};
use cada::app::{self, DeviceChoice};
use cada::train::generate::SamplingConfig;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cada", version, about = "CADA (Case-Augmented Deliberative Alignment) training engine")]
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
        Command::Tokenize { model, text, no_special } => {
            let m = cada::model::load::load_model(&model)?;
            let ids = m.tokenizer.encode(&text, !no_special)?;
            println!("{}", serde_json::to_string(&ids)?);
        }
        Command::Generate { model, prompt, chat, system, max_new_tokens, temperature, top_p, top_k, seed, device } => {
            let m = cada::model::load::load_model(&model)?;
            let sampling = SamplingConfig { temperature, top_p, top_k, max_new_tokens };
            let task = app::run_generate::GenerateTask { model: &m, prompt, chat, system, sampling, seed, stream: true };
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
        Command::Score { model, input, output, temperature, device } => {
            let m = cada::model::load::load_model(&model)?;
            let items = app::score::read_score_input(&input, &m)?;
            let results = app::run_on(device, app::score::ScoreTask { model: &m, items, temperature })?;
            let mut text = String::new();
            for r in &results {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
            match output {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
        }
    }
    Ok(())
}
