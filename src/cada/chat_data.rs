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

fn warn_prompt_not_prefix(m: &LoadedModel, at: &str, dropped: &[u32]) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let text = m.tokenizer.decode(dropped, false).unwrap_or_default();
        eprintln!(
            "warning: {at}: the tokenized prompt is not a prefix of the tokenized prompt + completion (the chat template renders the prompt alone differently, or tokens merge across the boundary); the completion starts where they diverge, so the training context lacks {text:?}. Shown once; it likely applies to other lines too"
        );
    });
}

/// Prompt ids (with the generation prompt) and the ids of each prompt + completion.
fn tokenize_pair(
    m: &LoadedModel,
    prompt: &Turns,
    completions: &[&Turns],
    line: &LineInputs,
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    let prompt_msgs = prompt.messages("user");
    let prompt_text = m.chat.render_line(&prompt_msgs, true, line)?;
    let prompt_ids = m.tokenizer.encode(&prompt_text, false)?;
    let full = completions
        .iter()
        .map(|c| {
            let mut msgs = prompt_msgs.clone();
            msgs.extend(c.messages("assistant"));
            let text = m.chat.render_line(&msgs, false, line)?;
            m.tokenizer.encode(&text, false)
        })
        .collect::<Result<_>>()?;
    Ok((prompt_ids, full))
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

/// One SFT example as [`sft_seq`] splits it; with `assistant_only_loss`, TRL's option of the
/// same name: only the tokens the template's `{% generation %}` blocks produce count
/// (transformers' assistant mask: every token overlapping a block's output), within the
/// completion for prompt-completion lines.
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
    let line = &rec.inputs;
    let (msgs, prompt_ids) = match &rec.body {
        SftBody::PromptCompletion { prompt, completion } => {
            let p = prompt.messages("user");
            let text = m.chat.render_line(&p, true, line)?;
            let prompt_ids = m.tokenizer.encode(&text, false)?;
            let mut all = p;
            all.extend(completion.messages("assistant"));
            (all, Some(prompt_ids))
        }
        SftBody::Messages(msgs) => (msgs.clone(), None),
    };
    let (text, spans) = m.chat.render_tracked(&msgs, false, line)?;
    let (ids, offsets) = m.tokenizer.encode_with_char_offsets(&text)?;
    let ctx_len = match &prompt_ids {
        Some(p) => {
            let len = common_prefix_length(p, &ids);
            if len < p.len() {
                warn_prompt_not_prefix(m, &rec.at, &p[len..]);
            }
            len
        }
        None => 1,
    };
    let seq = split_seq(m, &rec.at, "completion", &ids, ctx_len)?;
    let mask = token_mask(&offsets, &spans);
    let loss_mask: Vec<f32> = mask[ctx_len..].iter().map(|&k| k as u8 as f32).collect();
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

/// One SFT example: loss on the completion (prompt-completion) or on every token after the
/// first (`messages`, TRL's conversational language modelling).
pub fn sft_seq(m: &LoadedModel, rec: &SftRecord) -> Result<Seq> {
    match &rec.body {
        SftBody::PromptCompletion { prompt, completion } => {
            let (prompt_ids, full) = tokenize_pair(m, prompt, &[completion], &rec.inputs)?;
            let len = common_prefix_length(&prompt_ids, &full[0]);
            if len < prompt_ids.len() {
                warn_prompt_not_prefix(m, &rec.at, &prompt_ids[len..]);
            }
            split_seq(m, &rec.at, "completion", &full[0], len)
        }
        SftBody::Messages(msgs) => {
            let text = m.chat.render_line(msgs, false, &rec.inputs)?;
            let ids = m.tokenizer.encode(&text, false)?;
            if ids.len() < 2 {
                bail!(
                    "{}: the conversation renders to fewer than two tokens",
                    rec.at
                );
            }
            split_seq(m, &rec.at, "conversation", &ids, 1)
        }
    }
}

/// One DPO pair; both sequences share the prompt's ids up to where either diverges from it.
pub fn dpo_pair(m: &LoadedModel, rec: &DpoRecord) -> Result<DpoPair> {
    let (prompt_ids, full) =
        tokenize_pair(m, &rec.prompt, &[&rec.chosen, &rec.rejected], &rec.inputs)?;
    let len = common_prefix_length(&prompt_ids, &full[0])
        .min(common_prefix_length(&prompt_ids, &full[1]));
    if len < prompt_ids.len() {
        warn_prompt_not_prefix(m, &rec.at, &prompt_ids[len..]);
    }
    Ok(DpoPair {
        chosen: split_seq(m, &rec.at, "chosen completion", &full[0], len)?,
        rejected: split_seq(m, &rec.at, "rejected completion", &full[1], len)?,
    })
}
