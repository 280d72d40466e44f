//! `cada generate`: stream a completion for one prompt, a chat turn or a conversation.

use super::OnDevice;
use crate::backend::Backend;
use crate::cada::chat_data::context_ids;
use crate::cada::data::{prompt_item, PromptItem};
use crate::model::chat::Message;
use crate::model::llama::Llama;
use crate::model::load::LoadedModel;
use crate::train::generate::{generate, SamplingConfig};
use anyhow::{Context, Result};
use rand::SeedableRng;
use std::io::Write;
use std::path::Path;

/// What to continue.
pub enum GenerateInput {
    /// raw text, with the tokenizer's special tokens
    Text(String),
    /// one user turn (after an optional system one) through the chat template
    Chat {
        system: Option<String>,
        prompt: String,
    },
    /// a conversation (and its tools) through the chat template, as a prompt line renders
    Conversation(PromptItem),
}

/// A conversation file: a JSON list of messages, or an object with a conversational `prompt`
/// (and optionally `tools`, `chat_template_kwargs`) as a prompts line holds it.
pub fn read_conversation(path: &Path) -> Result<PromptItem> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let line = if v.is_array() {
        serde_json::json!({"prompt": v, "label": "benign"})
    } else {
        let mut o = v;
        if let Some(map) = o.as_object_mut() {
            map.entry("label").or_insert("benign".into());
        }
        o
    };
    prompt_item(&line, &path.display().to_string())
}

pub struct GenerateTask<'a> {
    pub model: &'a LoadedModel,
    pub input: GenerateInput,
    pub sampling: SamplingConfig,
    pub seed: u64,
    /// print tokens as they come
    pub stream: bool,
}

pub struct GenerateOutput {
    pub text: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub seconds: f64,
}

impl OnDevice for GenerateTask<'_> {
    type Output = GenerateOutput;
    fn run<B: Backend>(self, be: &B) -> Result<GenerateOutput> {
        let m = self.model;
        let ids = match &self.input {
            GenerateInput::Chat { system, prompt } => {
                let mut msgs = Vec::new();
                if let Some(s) = system {
                    msgs.push(Message::new("system", s));
                }
                msgs.push(Message::new("user", prompt));
                let text = m.chat.render(&msgs, true)?;
                m.tokenizer.encode(&text, false)?
            }
            GenerateInput::Conversation(item) => context_ids(m, None, item)?,
            GenerateInput::Text(prompt) => m.tokenizer.encode(prompt, true)?,
        };
        anyhow::ensure!(!ids.is_empty(), "the prompt encodes to zero tokens");
        let model = Llama::from_host(be, m.cfg.clone(), &m.params)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let stops = m.stop_ids();
        let start = std::time::Instant::now();
        let mut out_ids: Vec<u32> = Vec::new();
        let mut printed = 0usize;
        let mut stdout = std::io::stdout();
        let gen = generate(
            be,
            &model,
            std::slice::from_ref(&ids),
            &self.sampling,
            &stops,
            &mut rng,
            |_, t| {
                if !self.stream || stops.contains(&t) {
                    return;
                }
                out_ids.push(t);
                // Decode the whole continuation each time: a token can be half of a UTF-8 char.
                if let Ok(text) = m.tokenizer.decode(&out_ids, true) {
                    if text.len() > printed
                        && text.is_char_boundary(printed)
                        && !text.ends_with('\u{fffd}')
                    {
                        let _ = write!(stdout, "{}", &text[printed..]);
                        let _ = stdout.flush();
                        printed = text.len();
                    }
                }
            },
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let toks: Vec<u32> = gen.tokens[0]
            .iter()
            .copied()
            .filter(|t| !stops.contains(t))
            .collect();
        let text = m.tokenizer.decode(&toks, true)?;
        if self.stream && text.len() > printed {
            print!("{}", &text[printed.min(text.len())..]);
        }
        Ok(GenerateOutput {
            text,
            tokens: gen.tokens[0].len(),
            prompt_tokens: ids.len(),
            seconds,
        })
    }
}
