//! Chat templates rendered with a real Jinja engine (minijinja + Python-compatible methods),
//! as `tokenizer_config.json`'s `chat_template` expects.

use anyhow::{Context, Result};
use serde::Serialize;

mod generation;
pub use generation::token_mask;

/// One chat turn. Fields beyond `role` and `content` (`reasoning_content`, `tool_calls`,
/// `name`, …) are kept, in their order, and handed to the template as transformers hands them.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// transformers' names for a turn's reasoning; templates read one or another of them.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// A message as transformers 5.24 gives it to the template (`_alias_reasoning_fields`): when
/// any reasoning field is set, `thinking` and `reasoning_content` carry it too.
fn template_message(m: &Message) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    fields.insert("role".into(), m.role.clone().into());
    fields.insert("content".into(), m.content.clone().into());
    fields.extend(m.extra.clone());
    let reasoning = REASONING_FIELDS
        .iter()
        .find_map(|k| fields.get(*k).filter(|v| !v.is_null()).cloned());
    if let Some(r) = reasoning {
        // {"thinking": r, **message, "reasoning_content": r}: `thinking` first unless present.
        let mut aliased = serde_json::Map::new();
        aliased.insert("thinking".into(), r.clone());
        for (k, v) in fields {
            aliased.insert(k, v);
        }
        aliased.insert("reasoning_content".into(), r);
        fields = aliased;
    }
    serde_json::Value::Object(fields)
}

/// The tag transformers appends to the final message for `continue_final_message`.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// What a data line adds to its conversation's render (TRL's `tools` and `chat_template_kwargs`
/// columns): the functions the model may call, and template variables over the run's own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LineInputs {
    pub tools: Option<serde_json::Value>,
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// Names the renderer sets itself, which keyword arguments may not.
const RESERVED: [&str; 4] = ["messages", "add_generation_prompt", "tools", "documents"];

/// Checks that keyword arguments leave the renderer's own variables alone.
pub fn check_kwargs(kwargs: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    for key in RESERVED {
        anyhow::ensure!(
            !kwargs.contains_key(key),
            "chat_template_kwargs: `{key}` is set by the renderer itself, not a keyword argument"
        );
    }
    Ok(())
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// where the template came from, for error messages
    source: String,
    /// Extra variables every render sees (TRL's `chat_template_kwargs`, e.g. Qwen3's
    /// `enable_thinking`); like transformers' keyword arguments they override the special tokens.
    kwargs: serde_json::Map<String, serde_json::Value>,
    /// `{% generation %}` blocks in the template (see generation.rs)
    generation_blocks: usize,
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
        // transformers' set-up: jinja2 with trim_blocks and lstrip_blocks, loop controls, its own
        // tojson, raise_exception and strftime_now (chat_template_utils._compile_jinja_template)
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", python_tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", strftime_fixed_day);
        env.add_filter(generation::FILTER, generation::wrap);
        let (template, generation_blocks) = generation::rewrite_markers(template);
        env.add_template_owned("chat", template).map_err(|e| {
            anyhow::anyhow!("{source}: field `chat_template` does not compile: {e}")
        })?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            source: source.into(),
            kwargs: serde_json::Map::new(),
            generation_blocks,
        })
    }

    /// The same special tokens and keyword arguments with another template (e.g. a training
    /// template with `{% generation %}` markers).
    pub fn with_template(&self, template: &str, source: &str) -> Result<Self> {
        let mut t = ChatTemplate::new(template, &self.bos_token, &self.eos_token, source)?;
        t.kwargs = self.kwargs.clone();
        Ok(t)
    }

    /// [`with_template`](Self::with_template) with a template read from a file.
    pub fn with_template_file(&self, path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.with_template(&text, &path.display().to_string())
    }

    /// Whether the template marks the assistant's output with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.generation_blocks > 0
    }

    /// Where the template came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// [`render_line`](Self::render_line) and the character span of each `{% generation %}`
    /// block's output in the text (transformers' `generation_indices`).
    pub fn render_tracked(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        line: &LineInputs,
    ) -> Result<(String, Vec<(usize, usize)>)> {
        let msgs: Vec<serde_json::Value> = messages.iter().map(template_message).collect();
        let text = self.render_values(msgs, add_generation_prompt, line)?;
        Ok(generation::take_spans(&text))
    }

    /// Sets the extra variables of every later render (replacing earlier ones).
    pub fn set_kwargs(&mut self, kwargs: serde_json::Map<String, serde_json::Value>) -> Result<()> {
        check_kwargs(&kwargs)?;
        self.kwargs = kwargs;
        Ok(())
    }

    pub fn kwargs(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.kwargs
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_line(messages, add_generation_prompt, &LineInputs::default())
    }

    /// [`render`](Self::render) with a data line's inputs: `tools` (the JSON schemas of the
    /// functions the model may call, transformers' `tools` argument) and keyword arguments over
    /// the run's.
    pub fn render_line(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        line: &LineInputs,
    ) -> Result<String> {
        Ok(self
            .render_tracked(messages, add_generation_prompt, line)?
            .0)
    }

    /// transformers' `continue_final_message=True`: the conversation rendered without a
    /// generation prompt and cut right after the final message's content, so a model continues
    /// that (assistant) message rather than starting a new turn. A template that drops or
    /// rewrites the final content is an error, as in transformers.
    pub fn render_continuing(&self, messages: &[Message], line: &LineInputs) -> Result<String> {
        let last = messages.last().with_context(|| {
            format!(
                "{}: cannot continue the final message of an empty conversation",
                self.source
            )
        })?;
        let mut msgs: Vec<serde_json::Value> = messages.iter().map(template_message).collect();
        let tagged = format!("{}{CONTINUE_TAG}", last.content);
        msgs.last_mut().expect("non-empty")["content"] = tagged.into();
        let text = generation::take_spans(&self.render_values(msgs, false, line)?).0;
        let tag = CONTINUE_TAG.trim();
        anyhow::ensure!(
            text.contains(last.content.trim()) && text.contains(tag),
            "{}: field `chat_template` does not render the final message to continue (it drops or rewrites part of it): {:?}",
            self.source,
            last.content.trim()
        );
        let at = text.rfind(tag).expect("checked");
        Ok(if text[at..].starts_with(CONTINUE_TAG) {
            text[..at].to_string()
        } else {
            // the template trimmed the message's trailing space, so trim before the tag too
            text[..at].trim_end().to_string()
        })
    }

    fn render_values(
        &self,
        messages: Vec<serde_json::Value>,
        add_generation_prompt: bool,
        line: &LineInputs,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .expect("template added in new()");
        // What transformers' apply_chat_template passes: the special tokens, overridden by the
        // keyword arguments, then the conversation; `tools` when given, and `documents`, are
        // None (not undefined: templates test `tools is not none`).
        let mut ctx = serde_json::Map::new();
        ctx.insert("bos_token".into(), self.bos_token.clone().into());
        ctx.insert("eos_token".into(), self.eos_token.clone().into());
        ctx.extend(self.kwargs.clone());
        ctx.extend(line.kwargs.clone());
        ctx.insert("messages".into(), serde_json::Value::Array(messages));
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert(
            "tools".into(),
            line.tools.clone().unwrap_or(serde_json::Value::Null),
        );
        ctx.insert("documents".into(), serde_json::Value::Null);
        tmpl.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: field `chat_template` failed to render: {e}",
                    self.source
                )
            })
    }
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=…, separators=…,
/// sort_keys=…)`, without the HTML escaping of Jinja's own filter.
fn python_tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let invalid = |msg: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg);
    let indent: Option<minijinja::Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(
                usize::try_from(v.clone())
                    .map_err(|_| invalid(format!("tojson: indent must be a count, got {v}")))?,
            ),
        }),
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        None => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
        Some([item, key]) => (item.clone(), key.clone()),
        Some(other) => {
            return Err(invalid(format!(
                "tojson: separators must be a pair, got {other:?}"
            )))
        }
    };
    let json = serde_json::to_value(&value).map_err(|e| invalid(format!("tojson: {e}")))?;
    let style = PyJson {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(out)
}

/// The layout options of Python's `json.dumps`.
struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(unit) = &self.indent {
            out.push('\n');
            out.push_str(&unit.repeat(depth));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        // serde_json escapes what Python's encoder escapes (", \, \n, \r, \t, \b, \f, other
        // controls as \u00XX); ensure_ascii also escapes the rest as UTF-16 \uXXXX
        let quoted = serde_json::to_string(s).expect("a string serialises");
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }

    fn write(&self, v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Number(n) => out.push_str(&n.to_string()),
            J::String(s) => self.string(s, out),
            J::Array(items) if items.is_empty() => out.push_str("[]"),
            J::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            J::Object(map) if map.is_empty() => out.push_str("{}"),
            J::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.string(key, out);
                    out.push_str(&self.key_sep);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
        }
    }
}

/// `strftime_now(format)`: templates print "today's date" in system prompts. Ours is always
/// 2026-01-01 09:30:00, so that rendering, and therefore training, is reproducible.
fn strftime_fixed_day(format: String) -> std::result::Result<String, minijinja::Error> {
    const DAY: [(char, &str); 12] = [
        ('d', "01"),
        ('m', "01"),
        ('Y', "2026"),
        ('y', "26"),
        ('b', "Jan"),
        ('B', "January"),
        ('a', "Thu"),
        ('A', "Thursday"),
        ('H', "09"),
        ('M', "30"),
        ('S', "00"),
        ('j', "001"),
    ];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(spec) => match DAY.iter().find(|(k, _)| *k == spec) {
                Some((_, text)) => out.push_str(text),
                None => {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("strftime_now: %{spec} is not supported"),
                    ))
                }
            },
            None => out.push('%'),
        }
    }
    Ok(out)
}

/// The ChatML template, used by models without one of their own (e.g. the default model).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
