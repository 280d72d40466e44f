//! Chat templates rendered with a real Jinja engine (minijinja + Python-compatible methods),
//! as `tokenizer_config.json`'s `chat_template` expects.

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// Special tokens in tokenizer_config.json are either strings or `{"content": ...}` objects.
fn special_token(cfg: &serde_json::Value, key: &str) -> String {
    match cfg.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    }
}

impl ChatTemplate {
    /// From `tokenizer_config.json` content; `None` when it holds no template.
    pub fn from_tokenizer_config(cfg: &serde_json::Value, source: &str) -> Result<Option<Self>> {
        let template = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .with_context(|| {
                    format!("{source}: field `chat_template` has no \"default\" entry")
                })?
                .to_string(),
            Some(other) => {
                anyhow::bail!("{source}: field `chat_template` must be a string, got {other}")
            }
        };
        Self::new(
            &template,
            &special_token(cfg, "bos_token"),
            &special_token(cfg, "eos_token"),
            source,
        )
        .map(Some)
    }

    pub fn new(template: &str, bos_token: &str, eos_token: &str, source: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use it for "today's date" in system prompts; a fixed date keeps
            // rendering (and therefore training) reproducible.
            "01 Jan 2026".to_string()
        });
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| {
                anyhow::anyhow!("{source}: field `chat_template` does not compile: {e}")
            })?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .expect("template added in new()");
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| anyhow::anyhow!("chat template failed to render: {e}"))
    }
}

/// The ChatML template, used by models without one of their own (e.g. the default model).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
