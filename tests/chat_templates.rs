//! Our chat templates (minijinja, src/model/chat.rs) against transformers' (jinja2 with its own
//! set-up) on real models' templates: Qwen3 (thinking on and off), Qwen2.5, QwQ, DeepSeek-R1
//! distills, Llama 3.1/3.2/3.3, Phi-3.5, Mistral Nemo, SmolLM3, Granite 3.3, Gemma 2, Qwen3.5,
//! plus small templates for tojson's options, Python string methods, namespaces and
//! whitespace control. tests/fixtures/chat_templates.json holds what transformers rendered
//! (scripts/chat_template_dump.py); the template files are llama.cpp's copies, unpacked by
//! scripts/fetch_vocab_tests.sh and checked by sha256. Every text must be equal, and a
//! conversation transformers refuses (raise_exception) must be refused here too.

use cada::model::chat::{ChatTemplate, Message};
use sha2::Digest;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/chat_templates.json"
);
const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/vocab-tests/templates");

fn fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

fn token(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The compiled template of a case: a real model's file, or one of the inline ones.
fn template_of(f: &serde_json::Value, case: &serde_json::Value) -> (String, ChatTemplate) {
    if let Some(name) = case["template"].as_str() {
        let meta = &f["templates"][name];
        let path = format!("{TEMPLATES}/{name}.jinja");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (run scripts/fetch_vocab_tests.sh, as the test command does)")
        });
        let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
        assert_eq!(
            sha,
            meta["sha256"].as_str().unwrap(),
            "{path} is not the file the fixture was made from"
        );
        let text = String::from_utf8(bytes).unwrap();
        let t = ChatTemplate::new(
            &text,
            token(&meta["bos_token"]),
            token(&meta["eos_token"]),
            &path,
        )
        .unwrap();
        (name.to_string(), t)
    } else {
        let name = case["inline"].as_str().unwrap();
        let text = f["inline_templates"][name].as_str().unwrap();
        (
            format!("inline {name}"),
            ChatTemplate::new(text, "<s>", "</s>", name).unwrap(),
        )
    }
}

#[test]
fn chat_templates_render_what_transformers_renders() {
    let f = fixture();
    let conversations: Vec<Vec<Message>> =
        serde_json::from_value(f["conversations"].clone()).unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 280, "fixture holds {} cases", cases.len());
    let mut failures = Vec::new();
    let (mut equal, mut refused) = (0, 0);
    for case in cases {
        let (name, mut t) = template_of(&f, case);
        t.set_kwargs(case["kwargs"].as_object().unwrap().clone())
            .unwrap();
        let conv = &conversations[case["conversation"].as_u64().unwrap() as usize];
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let what = format!(
            "{name}, conversation {}, add_generation_prompt {gen}, kwargs {}",
            case["conversation"], case["kwargs"]
        );
        match (t.render(conv, gen), case.get("text")) {
            (Ok(ours), Some(theirs)) if ours == theirs.as_str().unwrap() => equal += 1,
            (Ok(ours), Some(theirs)) => {
                failures.push(format!("{what}:\n ours   {ours:?}\n theirs {theirs:?}"))
            }
            (Err(_), None) => refused += 1,
            (Ok(ours), None) => failures.push(format!(
                "{what}: transformers raised {}, ours rendered {ours:?}",
                case["error"]
            )),
            (Err(e), Some(_)) => failures.push(format!("{what}: ours failed: {e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // transformers refuses 14 (Gemma 2's system role, alternation checks, Qwen3.5 without a user turn)
    assert!(
        refused >= 10 && equal >= 270,
        "{equal} equal, {refused} refused"
    );
    println!("{equal} renders equal to transformers', {refused} refused by both");
}

/// `chat_template_kwargs` from the train config (`--set chat_template_kwargs.enable_thinking=false`)
/// reaches the template: Qwen3 then renders an empty thinking block after the generation prompt.
#[test]
fn train_config_kwargs_switch_qwen3_thinking_off() {
    let f = fixture();
    let cfg = cada::cada::config::TrainConfig::load(
        None,
        &["chat_template_kwargs.enable_thinking=false".to_string()],
    )
    .unwrap();
    let kwargs = cfg.chat_template_kwargs_json().unwrap();
    assert_eq!(
        serde_json::Value::Object(kwargs.clone()),
        serde_json::json!({"enable_thinking": false})
    );
    let case = serde_json::json!({"template": "Qwen-Qwen3-0.6B"});
    let (_, mut t) = template_of(&f, &case);
    let msgs = [Message::new("user", "hi")];
    let thinking = t.render(&msgs, true).unwrap();
    assert_eq!(
        thinking,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    t.set_kwargs(kwargs).unwrap();
    let quiet = t.render(&msgs, true).unwrap();
    assert_eq!(quiet, format!("{thinking}<think>\n\n</think>\n\n"));
    // the renderer's own variables are not keyword arguments
    let mut bad = serde_json::Map::new();
    bad.insert("messages".into(), serde_json::json!([]));
    let err = t.set_kwargs(bad).unwrap_err().to_string();
    assert!(
        err.contains("chat_template_kwargs") && err.contains("messages"),
        "{err}"
    );
}

/// A conversation the template refuses (Gemma 2 has no system role) is an error naming the
/// template's file and the template's own message.
#[test]
fn a_refused_conversation_names_the_file_and_the_reason() {
    let f = fixture();
    let (_, t) = template_of(&f, &serde_json::json!({"template": "google-gemma-2-2b-it"}));
    let msgs = [
        Message::new("system", "be safe"),
        Message::new("user", "hi"),
    ];
    let err = format!("{:#}", t.render(&msgs, true).unwrap_err());
    assert!(
        err.contains("google-gemma-2-2b-it.jinja")
            && err.contains("chat_template")
            && err.contains("System role not supported"),
        "{err}"
    );
}
