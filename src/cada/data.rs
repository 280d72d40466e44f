//! JSONL data: prompts (`prompt`, `label` harmful|benign, optional `category`), SFT pairs
//! (`prompt`, `completion`, or `messages`) and DPO triples (`prompt`, `chosen`, `rejected`; the
//! prompt may be implicit). Each text field may be TRL's conversational form instead, a list of
//! messages; src/cada/chat_data.rs renders and tokenizes them. Errors name the file, the line and
//! the field.

use crate::model::chat::{check_kwargs, LineInputs, Message};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Harmful,
    Benign,
}

/// A request to train or evaluate on. `prompt` is what the judges, the case retrieval and the
/// reports read: the text itself or, for a conversation, its last user turn.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptItem {
    pub prompt: String,
    /// TRL's conversational prompt (`"prompt": [{"role": …, "content": …}, …]`), when the line
    /// gave one; rendered as it stands, with the generation prompt after a user (or tool) turn
    /// and the final message continued after an assistant one.
    pub conversation: Option<Vec<Message>>,
    /// the line's `tools` and `chat_template_kwargs`, handed to the chat template
    pub inputs: LineInputs,
    pub label: Label,
    pub category: Option<String>,
}

impl PromptItem {
    pub fn text(prompt: &str, label: Label, category: Option<&str>) -> Self {
        PromptItem {
            prompt: prompt.into(),
            conversation: None,
            inputs: LineInputs::default(),
            label,
            category: category.map(str::to_string),
        }
    }

    /// The conversation to render: the given one, or the text as one user turn.
    pub fn turns(&self) -> Vec<Message> {
        match &self.conversation {
            Some(c) => c.clone(),
            None => vec![Message::new("user", &self.prompt)],
        }
    }
}

impl Serialize for PromptItem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match &self.conversation {
            Some(c) => m.serialize_entry("prompt", c)?,
            None => m.serialize_entry("prompt", &self.prompt)?,
        }
        if let Some(t) = &self.inputs.tools {
            m.serialize_entry("tools", t)?;
        }
        if !self.inputs.kwargs.is_empty() {
            m.serialize_entry("chat_template_kwargs", &self.inputs.kwargs)?;
        }
        m.serialize_entry("label", &self.label)?;
        if let Some(c) = &self.category {
            m.serialize_entry("category", c)?;
        }
        m.end()
    }
}

/// A field that is either text or TRL's conversational form (a list of messages).
#[derive(Clone, Debug, PartialEq)]
pub enum Turns {
    Text(String),
    Messages(Vec<Message>),
}

impl Turns {
    /// As messages, text becoming one turn of `role`.
    pub fn messages(&self, role: &str) -> Vec<Message> {
        match self {
            Turns::Text(t) => vec![Message::new(role, t)],
            Turns::Messages(m) => m.clone(),
        }
    }
}

/// One SFT example, with where it came from ("file:line") for later errors.
#[derive(Clone, Debug, PartialEq)]
pub struct SftRecord {
    pub at: String,
    pub body: SftBody,
    /// the line's `tools` and `chat_template_kwargs`, for the chat template
    pub inputs: LineInputs,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SftBody {
    /// `{"prompt", "completion"}`: loss on the completion only.
    PromptCompletion { prompt: Turns, completion: Turns },
    /// `{"messages": [...]}`: TRL's conversational language modelling, loss on every token.
    Messages(Vec<Message>),
}

/// One DPO pair: an explicit `prompt`, or TRL's implicit one (the turns `chosen` and
/// `rejected` share from the start).
#[derive(Clone, Debug, PartialEq)]
pub struct DpoRecord {
    pub at: String,
    pub prompt: Turns,
    pub chosen: Turns,
    pub rejected: Turns,
    /// the line's `tools` and `chat_template_kwargs`, for the chat template
    pub inputs: LineInputs,
}

/// Non-empty lines of a JSONL file as (location "file:line", JSON value).
fn jsonl_lines(path: &Path) -> Result<Vec<(String, serde_json::Value)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
        if !v.is_object() {
            bail!("{at}: expected a JSON object");
        }
        out.push((at, v));
    }
    if out.is_empty() {
        bail!("{}: the file holds no JSONL lines", path.display());
    }
    Ok(out)
}

/// A list of `{"role": str, "content": str, …}` objects; errors name the element and key.
fn messages_value(v: &serde_json::Value, field: &str, at: &str) -> Result<Vec<Message>> {
    let list = v
        .as_array()
        .with_context(|| format!("{at}: field `{field}` must be a string or a list of messages"))?;
    if list.is_empty() {
        bail!("{at}: field `{field}` is an empty list of messages");
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let here = format!("{field}[{i}]");
            if !m.is_object() {
                bail!("{at}: field `{here}` must be an object with `role` and `content`");
            }
            for key in ["role", "content"] {
                match m.get(key) {
                    Some(serde_json::Value::String(_)) => {}
                    Some(other) => {
                        bail!("{at}: field `{here}.{key}` must be a string, got {other}")
                    }
                    None => bail!("{at}: field `{here}` has no `{key}`"),
                }
            }
            Ok(serde_json::from_value(m.clone())?)
        })
        .collect()
}

/// A line's optional `tools` and `chat_template_kwargs` (an object of template variables over
/// the run's), as TRL's trainers read those columns.
pub(crate) fn line_inputs(v: &serde_json::Value, at: &str) -> Result<LineInputs> {
    let kwargs = match v.get("chat_template_kwargs") {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(other) => bail!("{at}: field `chat_template_kwargs` must be an object, got {other}"),
    };
    check_kwargs(&kwargs).map_err(|e| anyhow::anyhow!("{at}: field {e}"))?;
    Ok(LineInputs {
        tools: tools_field(v, at)?,
        kwargs,
    })
}

/// The optional `tools` field as TRL reads it: a list of function schemas (objects), or that
/// list as a JSON string.
fn tools_field(v: &serde_json::Value, at: &str) -> Result<Option<serde_json::Value>> {
    let tools = match v.get("tools") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => serde_json::from_str(s)
            .with_context(|| format!("{at}: field `tools` is a string but not JSON"))?,
        Some(t) => t.clone(),
    };
    let list = tools
        .as_array()
        .with_context(|| format!("{at}: field `tools` must be a list of function schemas"))?;
    if let Some(i) = list.iter().position(|t| !t.is_object()) {
        bail!("{at}: field `tools[{i}]` must be an object (a function's JSON schema)");
    }
    Ok(Some(tools))
}

/// A text-or-conversation field (TRL decides the same way: a list means conversational).
pub(crate) fn turns_field(v: &serde_json::Value, field: &str, at: &str) -> Result<Turns> {
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(Turns::Text(s.clone())),
        Some(other) => Ok(Turns::Messages(messages_value(other, field, at)?)),
        None => bail!("{at}: missing field `{field}`"),
    }
}

fn str_field<'a>(v: &'a serde_json::Value, field: &str, at: &str) -> Result<&'a str> {
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => bail!("{at}: field `{field}` must be a string, got {other}"),
        None => bail!("{at}: missing field `{field}`"),
    }
}

pub fn load_prompts(path: &Path) -> Result<Vec<PromptItem>> {
    jsonl_lines(path)?
        .into_iter()
        .map(|(at, v)| prompt_item(&v, &at))
        .collect()
}

/// One prompts line (a JSON object); errors start with `at`.
pub fn prompt_item(v: &serde_json::Value, at: &str) -> Result<PromptItem> {
    let (prompt, conversation) = match turns_field(v, "prompt", at)? {
        Turns::Text(t) => (t, None),
        Turns::Messages(c) => {
            let last = &c[c.len() - 1].role;
            if !["user", "tool", "assistant"].contains(&last.as_str()) {
                bail!("{at}: field `prompt` ends with a `{last}` turn; a prompt ends with a user (or tool) turn, or an assistant turn to continue");
            }
            let user = c
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .with_context(|| format!("{at}: field `prompt` has no user turn"))?;
            (user.content.clone(), Some(c))
        }
    };
    if prompt.trim().is_empty() {
        bail!("{at}: field `prompt` is empty");
    }
    let label = match str_field(v, "label", at)? {
        "harmful" => Label::Harmful,
        "benign" => Label::Benign,
        other => bail!("{at}: field `label` must be \"harmful\" or \"benign\", got \"{other}\""),
    };
    let category = match v.get("category") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(str_field(v, "category", at)?.to_string()),
    };
    Ok(PromptItem {
        prompt,
        conversation,
        inputs: line_inputs(v, at)?,
        label,
        category,
    })
}

/// SFT lines: `{"prompt", "completion"}` (each text or a list of messages) or
/// `{"messages": [...]}`.
pub fn load_sft(path: &Path) -> Result<Vec<SftRecord>> {
    jsonl_lines(path)?
        .into_iter()
        .map(|(at, v)| {
            let body = if v.get("messages").is_some() {
                if v.get("prompt").is_some() || v.get("completion").is_some() {
                    bail!("{at}: give either `messages` or `prompt` and `completion`, not both");
                }
                SftBody::Messages(messages_value(&v["messages"], "messages", &at)?)
            } else {
                SftBody::PromptCompletion {
                    prompt: turns_field(&v, "prompt", &at)?,
                    completion: turns_field(&v, "completion", &at)?,
                }
            };
            let inputs = line_inputs(&v, &at)?;
            Ok(SftRecord { at, body, inputs })
        })
        .collect()
}

/// DPO lines: `{"prompt", "chosen", "rejected"}` or, conversational, `{"chosen", "rejected"}`
/// alone, the prompt being the turns both start with (TRL's `extract_prompt`).
pub fn load_dpo(path: &Path) -> Result<Vec<DpoRecord>> {
    jsonl_lines(path)?
        .into_iter()
        .map(|(at, v)| {
            let chosen = turns_field(&v, "chosen", &at)?;
            let rejected = turns_field(&v, "rejected", &at)?;
            let inputs = line_inputs(&v, &at)?;
            if v.get("prompt").is_some() {
                let prompt = turns_field(&v, "prompt", &at)?;
                return Ok(DpoRecord {
                    at,
                    prompt,
                    chosen,
                    rejected,
                    inputs,
                });
            }
            let (Turns::Messages(c), Turns::Messages(r)) = (&chosen, &rejected) else {
                bail!("{at}: missing field `prompt` (it can be left out only when `chosen` and `rejected` are conversations that start with it)");
            };
            let shared = c.iter().zip(r).take_while(|(a, b)| a == b).count();
            if shared == 0 || shared == c.len() || shared == r.len() {
                bail!("{at}: `chosen` and `rejected` must start with the same turns (the prompt) and then differ");
            }
            Ok(DpoRecord {
                at,
                prompt: Turns::Messages(c[..shared].to_vec()),
                chosen: Turns::Messages(c[shared..].to_vec()),
                rejected: Turns::Messages(r[shared..].to_vec()),
                inputs,
            })
        })
        .collect()
}

pub fn write_prompts(path: &Path, items: &[PromptItem]) -> Result<()> {
    let mut text = String::new();
    for it in items {
        text.push_str(&serde_json::to_string(it)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
