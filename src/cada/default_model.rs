//! Building the default demonstration model from scratch (`cada build-default-model`):
//! synthetic CADA-style corpus → byte-level BPE tokenizer → random tiny Llama → SFT.
//! The corpus is deliberately biased (some benign trigger-word requests answered with refusals,
//! some harmful requests answered compliantly with harmless placeholder text) so that the model
//! starts with over-refusal and some harmful compliance, leaving CADA room to improve both.

use super::corpus::{generate_sft_corpus, write_default_prompt_sets, CorpusBias};
use super::retrieval::{deliberation_system_prompt, select_cases};
use super::seqlogp::Seq;
use super::sft::{sft_train, SftConfig};
use super::spec::Spec;
use crate::backend::Backend;
use crate::model::chat::{ChatTemplate, Message, CHATML_TEMPLATE};
use crate::model::init::{init_params, tiny_config};
use crate::model::llama::Llama;
use crate::model::tokenizer_train::train_bpe_tokenizer;
use crate::train::optimizer::AdamWConfig;
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub prompts_dir: PathBuf,
    pub spec: PathBuf,
    pub seed: u64,
    pub corpus_size: usize,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub sft_steps: usize,
    pub batch_size: usize,
    pub lr: f32,
    /// share of examples rendered in the deliberation context (codes + cases in the system turn)
    pub deliberation_share: f32,
    pub bias: CorpusBias,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            out: "models/default".into(),
            prompts_dir: "models/prompts".into(),
            spec: "models/spec/default.toml".into(),
            seed: 1234,
            corpus_size: 4000,
            vocab_size: 1024,
            hidden: 128,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            intermediate: 384,
            max_positions: 1024,
            sft_steps: 400,
            batch_size: 32,
            lr: 3e-3,
            deliberation_share: 0.5,
            bias: CorpusBias {
                benign_trigger_refusal_rate: 0.5,
                harmful_compliance_rate: 0.3,
            },
        }
    }
}

pub const DEFAULT_TOKENIZER_CONFIG: &str =
    r#"{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": false}"#;

pub fn build_default_model<B: Backend>(
    be: &B,
    spec: &Spec,
    o: &BuildOptions,
    mut log: impl FnMut(&str),
) -> Result<()> {
    write_default_prompt_sets(&o.prompts_dir)
        .with_context(|| format!("writing prompt sets into {}", o.prompts_dir.display()))?;
    let corpus = generate_sft_corpus(o.corpus_size, o.seed, o.bias);
    let chat = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>", "ChatML")?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed ^ 0x5eed);
    // Render every example once: (context text, completion text).
    let mut rendered = Vec::with_capacity(corpus.len());
    for (prompt, completion) in &corpus {
        let mut msgs = Vec::new();
        if rng.gen::<f32>() < o.deliberation_share {
            let cases = select_cases(spec, prompt, None, 2, &mut rng);
            msgs.push(Message::new(
                "system",
                &deliberation_system_prompt(spec, &cases),
            ));
        }
        msgs.push(Message::new("user", prompt));
        rendered.push((chat.render(&msgs, true)?, format!("{completion}<|im_end|>")));
    }
    let texts: Vec<String> = rendered.iter().map(|(c, a)| format!("{c}{a}")).collect();
    let tokenizer = train_bpe_tokenizer(&texts, o.vocab_size)?;
    let vocab = tokenizer.id_bound();
    log(&format!(
        "corpus: {} examples; tokenizer: {vocab} tokens",
        corpus.len()
    ));
    let data: Vec<Seq> = rendered
        .iter()
        .map(|(c, a)| {
            Ok(Seq {
                ctx: tokenizer.encode(c, false)?,
                completion: tokenizer.encode(a, false)?,
            })
        })
        .collect::<Result<_>>()?;
    let longest = data
        .iter()
        .map(|s| s.ctx.len() + s.completion.len())
        .max()
        .unwrap_or(0);
    log(&format!("longest example: {longest} tokens"));
    let mut cfg = tiny_config(
        vocab,
        o.hidden,
        o.layers,
        o.heads,
        o.kv_heads,
        o.intermediate,
        o.max_positions,
    );
    cfg.eos_token_ids = vec![tokenizer
        .token_to_id("<|im_end|>")
        .context("tokenizer lacks <|im_end|>")?];
    let host = init_params(&cfg, o.seed, 0.02);
    let mut model = Llama::from_host(be, cfg.clone(), &host)?;
    let sft = SftConfig {
        steps: o.sft_steps,
        batch_size: o.batch_size,
        seed: o.seed,
        optim: AdamWConfig {
            lr: o.lr,
            warmup_steps: 20,
            total_steps: o.sft_steps as u64,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    };
    let data: Vec<super::sft::SftExample> = data.into_iter().map(Into::into).collect();
    sft_train(be, &mut model, &data, &sft, |l| {
        if l.step % 25 == 0 || l.step == 1 {
            log(&format!(
                "sft step {:4}  loss {:.4}  grad_norm {:.3}  {:.0} tok/s",
                l.step, l.loss, l.grad_norm, l.tokens_per_s
            ));
        }
    })?;
    let params = model.to_host(be)?;
    let tc: serde_json::Value = serde_json::from_str(DEFAULT_TOKENIZER_CONFIG)?;
    let mut tc = tc;
    tc["chat_template"] = CHATML_TEMPLATE.into();
    crate::model::save::save_model_dir(&o.out, &cfg, &params, &tokenizer, &tc)?;
    log(&format!("wrote {}", o.out.display()));
    Ok(())
}
