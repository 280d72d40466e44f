//! Data records → token sequences through the model's chat template, as TRL 1.16 tokenizes
//! them (`SFTTrainer` / `DPOTrainer` `tokenize_fn`): the prompt rendered with the generation
//! prompt, prompt + completion rendered as one conversation, each tokenized whole (no special
//! tokens added: the template writes them). The completion starts where the two token lists
//! diverge (TRL's `common_prefix_length`): after the prompt, unless the template renders the
//! prompt alone differently or tokens merge across the boundary; then a warning, once.
//! Text fields are shorthand for one turn: a user turn for a prompt, an assistant turn for a
//! completion.

use super::data::{DpoRecord, PromptItem, SftBody, SftRecord, Turns};
use super::dpo::DpoPair;
use super::seqlogp::Seq;
use super::sft::SftExample;
use crate::model::chat::{token_mask, LineInputs, Message};
use crate::model::load::LoadedModel;
use anyhow::{bail, Result};

/// The conversation a prompt is rendered from: `system` (the deliberation context: codes and
/// cases) first, merged into the conversation's own system turn when it has one.
fn with_system(system: Option<&str>, turns: &[Message]) -> Vec<Message> {
    let mut msgs = Vec::with_capacity(turns.len() + 1);
    match (system, turns.first()) {
        (None, _) => return turns.to_vec(),
        (Some(s), Some(first)) if first.role == "system" => {
            let mut merged = first.clone();
            merged.content = format!("{s}\n\n{}", first.content);
            msgs.push(merged);
            msgs.extend_from_slice(&turns[1..]);
        }
        (Some(s), _) => {
            msgs.push(Message::new("system", s));
            msgs.extend_from_slice(turns);
        }
    }
    msgs
}

/// The text a rollout continues: after a user or tool turn the generation prompt, after an
/// assistant turn that message continued (transformers' `continue_final_message`, as TRL's
/// `maybe_apply_chat_template` chooses).
pub fn prompt_text(
    m: &LoadedModel,
    system: Option<&str>,
    turns: &[Message],
    line: &LineInputs,
) -> Result<String> {
    let msgs = with_system(system, turns);
    match msgs.last().map(|t| t.role.as_str()) {
        Some("assistant") => m.chat.render_continuing(&msgs, line),
        _ => m.chat.render_line(&msgs, true, line),
    }
}

/// Token ids of [`prompt_text`] for a prompt item (its conversation, tools and kwargs).
pub fn context_ids(m: &LoadedModel, system: Option<&str>, item: &PromptItem) -> Result<Vec<u32>> {
    let text = prompt_text(m, system, &item.turns(), &item.inputs)?;
    m.tokenizer.encode(&text, false)
}

fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where the completion starts: the tokens `prompt_ids` shares with every full sequence (TRL's
/// `common_prefix_length`), with a warning (once per run) when that is not the whole prompt.
fn completion_start(m: &LoadedModel, at: &str, prompt_ids: &[u32], full: &[&[u32]]) -> usize {
    let len = full
        .iter()
        .map(|f| common_prefix_length(prompt_ids, f))
        .min()
        .unwrap_or(0);
    if len < prompt_ids.len() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let text = m.tokenizer.decode(&prompt_ids[len..], false).unwrap_or_default();
            eprintln!(
                "warning: {at}: the tokenized prompt is not a prefix of the tokenized prompt + completion (the chat template renders the prompt alone differently, or tokens merge across the boundary); the completion starts where they diverge, so the training context lacks {text:?}. Shown once; it likely applies to other lines too"
            );
        });
    }
    len
}

/// The prompt's ids, rendered with the generation prompt (TRL's `add_generation_prompt=True`).
fn prompt_ids(m: &LoadedModel, prompt: &[Message], line: &LineInputs) -> Result<Vec<u32>> {
    m.tokenizer
        .encode(&m.chat.render_line(prompt, true, line)?, false)
}

/// The prompt's turns followed by the completion's.
fn joined(prompt: &[Message], completion: &Turns) -> Vec<Message> {
    let mut msgs = prompt.to_vec();
    msgs.extend(completion.messages("assistant"));
    msgs
}

/// Splits `ids` after `ctx_len` tokens, checking both parts and the length.
fn split_seq(m: &LoadedModel, at: &str, what: &str, ids: &[u32], ctx_len: usize) -> Result<Seq> {
    if ctx_len == 0 {
        bail!("{at}: the {what} shares no leading token with its prompt as the chat template renders them, so there is no context to train it from");
    }
    if ctx_len == ids.len() {
        bail!("{at}: the {what} adds no tokens after the prompt");
    }
    let max = m.cfg.max_sequence_len();
    if ids.len() > max {
        bail!(
            "{at}: the example is {} tokens, more than the model's {}",
            ids.len(),
            m.cfg.max_sequence_what()
        );
    }
    Ok(Seq {
        ctx: ids[..ctx_len].to_vec(),
        completion: ids[ctx_len..].to_vec(),
    })
}

/// An SFT line tokenized whole: its ids, where the trained part starts, and which tokens the
/// template's `{% generation %}` blocks wrote (transformers' assistant mask: every token
/// overlapping a block's output; all false without blocks).
struct SftTokens {
    ids: Vec<u32>,
    ctx_len: usize,
    assistant: Vec<bool>,
}

fn sft_tokens(m: &LoadedModel, rec: &SftRecord) -> Result<SftTokens> {
    let line = &rec.inputs;
    let (msgs, prompt) = match &rec.body {
        SftBody::PromptCompletion { prompt, completion } => {
            let p = prompt.messages("user");
            let ids = prompt_ids(m, &p, line)?;
            (joined(&p, completion), Some(ids))
        }
        SftBody::Messages(msgs) => (msgs.clone(), None),
    };
    let (text, spans) = m.chat.render_tracked(&msgs, false, line)?;
    let (ids, offsets) = m.tokenizer.encode_with_char_offsets(&text)?;
    let ctx_len = match &prompt {
        Some(p) => completion_start(m, &rec.at, p, &[&ids]),
        None if ids.len() < 2 => bail!(
            "{}: the conversation renders to fewer than two tokens",
            rec.at
        ),
        // language modelling: every token after the first
        None => 1,
    };
    Ok(SftTokens {
        assistant: token_mask(&offsets, &spans),
        ids,
        ctx_len,
    })
}

/// One SFT example as [`sft_seq`] splits it; with `assistant_only_loss`, TRL's option of the
/// same name: only the tokens the template's `{% generation %}` blocks produce count, within
/// the completion for prompt-completion lines.
pub fn sft_example(
    m: &LoadedModel,
    rec: &SftRecord,
    assistant_only_loss: bool,
) -> Result<SftExample> {
    if !assistant_only_loss {
        return Ok(sft_seq(m, rec)?.into());
    }
    if !m.chat.has_generation_blocks() {
        bail!(
            "{}: assistant-only loss needs a chat template that marks the assistant's output with {{% generation %}} … {{% endgeneration %}} (TRL's training templates do; pass one with --chat-template)",
            m.chat.source()
        );
    }
    let t = sft_tokens(m, rec)?;
    let seq = split_seq(m, &rec.at, sft_what(rec), &t.ids, t.ctx_len)?;
    let loss_mask: Vec<f32> = t.assistant[t.ctx_len..]
        .iter()
        .map(|&k| k as u8 as f32)
        .collect();
    if !loss_mask.contains(&1.0) {
        bail!(
            "{}: no assistant tokens to train on (the chat template's {{% generation %}} blocks cover none of this example's completion)",
            rec.at
        );
    }
    Ok(SftExample {
        seq,
        loss_mask: Some(loss_mask),
    })
}

fn sft_what(rec: &SftRecord) -> &'static str {
    match rec.body {
        SftBody::PromptCompletion { .. } => "completion",
        SftBody::Messages(_) => "conversation",
    }
}

/// One SFT example: loss on the completion (prompt-completion) or on every token after the
/// first (`messages`, TRL's conversational language modelling).
pub fn sft_seq(m: &LoadedModel, rec: &SftRecord) -> Result<Seq> {
    let t = sft_tokens(m, rec)?;
    split_seq(m, &rec.at, sft_what(rec), &t.ids, t.ctx_len)
}

/// One DPO pair; both sequences share the prompt's ids up to where either diverges from it.
pub fn dpo_pair(m: &LoadedModel, rec: &DpoRecord) -> Result<DpoPair> {
    let line = &rec.inputs;
    let p = rec.prompt.messages("user");
    let prompt = prompt_ids(m, &p, line)?;
    let full = |c: &Turns| -> Result<Vec<u32>> {
        let text = m.chat.render_line(&joined(&p, c), false, line)?;
        m.tokenizer.encode(&text, false)
    };
    let (chosen, rejected) = (full(&rec.chosen)?, full(&rec.rejected)?);
    let len = completion_start(m, &rec.at, &prompt, &[&chosen, &rejected]);
    Ok(DpoPair {
        chosen: split_seq(m, &rec.at, "chosen completion", &chosen, len)?,
        rejected: split_seq(m, &rec.at, "rejected completion", &rejected, len)?,
    })
}
