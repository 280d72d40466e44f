//! `cada generate`: stream a completion for one prompt (or a chat turn).

use super::OnDevice;
use crate::backend::Backend;
use crate::model::chat::Message;
use crate::model::llama::Llama;
use crate::model::load::LoadedModel;
use crate::train::generate::{generate, SamplingConfig};
use anyhow::Result;
use rand::SeedableRng;
use std::io::Write;

pub struct GenerateTask<'a> {
    pub model: &'a LoadedModel,
    pub prompt: String,
    pub chat: bool,
    pub system: Option<String>,
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
        let ids = if self.chat {
            let mut msgs = Vec::new();
            if let Some(s) = &self.system {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", &self.prompt));
            let text = m.chat.render(&msgs, true)?;
            m.tokenizer.encode(&text, false)?
        } else {
            m.tokenizer.encode(&self.prompt, true)?
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
