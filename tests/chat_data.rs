//! Conversational data (TRL's formats) tokenized as TRL 1.16 tokenizes it: SFT
//! prompt-completion and `messages` lines, DPO lines with an explicit or an implicit prompt, and
//! rollout prompts (the generation prompt after a user turn, the final message continued after an
//! assistant one), with and without `tools` and tool calls, each written to a JSONL file and read
//! back through our loaders.
//! tests/fixtures/trl_chat_data.json holds TRL's ids (scripts/trl_chat_data_dump.py: TRL's
//! `_tokenize`, `common_prefix_length`, `extract_prompt`, `apply_chat_template` over transformers
//! 5.24's tokenizers and templates) for the default model, SmolLM2 and SmolLM2's tokenizer under
//! Qwen3's, Llama 3.1's and Phi-3.5's templates and one whose generation prompt the full
//! conversation does not start with. Every id must be equal, the prompt/completion split too, and a
//! conversation the template refuses must be refused here.

use cada::cada::chat_data::{context_ids, dpo_pair, sft_example, sft_seq};
use cada::cada::data::{load_dpo, load_prompts, load_sft, Label, PromptItem, SftBody, Turns};
use cada::model::chat::{ChatTemplate, Message};
use cada::model::load::{load_model, LoadedModel};
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/trl_chat_data.json"
);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn special(cfg: &serde_json::Value, key: &str) -> String {
    match &cfg[key] {
        serde_json::Value::String(s) => s.clone(),
        v => v["content"].as_str().unwrap_or("").to_string(),
    }
}

/// The fixture's model with its template (the tokenizer's own, a checked file, or inline).
fn model_of(spec: &serde_json::Value) -> LoadedModel {
    let mut m = load_model(&root().join(spec["dir"].as_str().unwrap())).unwrap();
    let t = &spec["template"];
    let text = if let Some(file) = t["file"].as_str() {
        let path = root()
            .join(t["dir"].as_str().unwrap_or("models/vocab-tests/templates"))
            .join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/fetch_vocab_tests.sh, as the test command does)",
                path.display()
            )
        });
        assert_eq!(
            format!("{:x}", sha2::Sha256::digest(&bytes)),
            t["sha256"].as_str().unwrap(),
            "{} is not the file the fixture was made from",
            path.display()
        );
        Some(String::from_utf8(bytes).unwrap())
    } else {
        t["inline"].as_str().map(str::to_string)
    };
    if let Some(text) = text {
        let cfg = &m.tokenizer_config;
        m.chat = ChatTemplate::new(
            &text,
            &special(cfg, "bos_token"),
            &special(cfg, "eos_token"),
            "fixture template",
        )
        .unwrap();
    }
    m
}

fn write_line(dir: &Path, line: &serde_json::Value) -> PathBuf {
    let p = dir.join("data.jsonl");
    std::fs::write(&p, format!("{line}\n")).unwrap();
    p
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Ours for one case: Ok(what the fixture's `expect` holds) or the error.
fn ours(
    m: &LoadedModel,
    case: &serde_json::Value,
    dir: &Path,
) -> anyhow::Result<serde_json::Value> {
    let path = write_line(dir, &case["line"]);
    Ok(match case["kind"].as_str().unwrap() {
        "sft" => {
            let rec = &load_sft(&path)?[0];
            let seq = sft_seq(m, rec)?;
            let mut all = seq.ctx.clone();
            all.extend(&seq.completion);
            serde_json::json!({"input_ids": all, "ctx_len": seq.ctx.len()})
        }
        "dpo" => {
            let pair = dpo_pair(m, &load_dpo(&path)?[0])?;
            assert_eq!(
                pair.chosen.ctx, pair.rejected.ctx,
                "the two share the prompt"
            );
            let join = |s: &cada::cada::seqlogp::Seq| {
                let mut v = s.ctx.clone();
                v.extend(&s.completion);
                v
            };
            serde_json::json!({"chosen_ids": join(&pair.chosen), "rejected_ids": join(&pair.rejected), "ctx_len": pair.chosen.ctx.len()})
        }
        "sft_assistant" => {
            let ex = sft_example(m, &load_sft(&path)?[0], true)?;
            let mut all = ex.seq.ctx.clone();
            all.extend(&ex.seq.completion);
            serde_json::json!({"input_ids": all, "ctx_len": ex.seq.ctx.len(), "loss_mask": ex.loss_mask.unwrap()})
        }
        "prompt" => {
            let item = &load_prompts(&path)?[0];
            serde_json::json!({"ids": context_ids(m, None, item)?})
        }
        k => panic!("unknown kind {k}"),
    })
}

#[test]
fn conversational_data_tokenizes_as_trl() {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let smollm2 = root().join("models/smollm2-135m-instruct/config.json");
    let dir = tempfile::tempdir().unwrap();
    let mut models: HashMap<String, LoadedModel> = HashMap::new();
    let (mut equal, mut refused, mut skipped) = (0, 0, 0);
    for case in f["cases"].as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let spec = f["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap();
        if spec["dir"].as_str().unwrap().contains("smollm2") && !smollm2.exists() {
            skipped += 1;
            continue;
        }
        let m = models
            .entry(name.to_string())
            .or_insert_with(|| model_of(spec));
        m.chat
            .set_kwargs(case["kwargs"].as_object().unwrap().clone())
            .unwrap();
        let what = format!(
            "{name} {} #{} kwargs {}",
            case["kind"], case["index"], case["kwargs"]
        );
        match (ours(m, case, dir.path()), case.get("expect")) {
            (Ok(got), Some(want)) => {
                for (key, w) in want.as_object().unwrap() {
                    match key.as_str() {
                        "text" | "prompt_is_prefix" => continue,
                        // TRL's loss positions: the assistant mask within the completion
                        "assistant_masks" => {
                            let ctx = want["ctx_len"].as_u64().unwrap() as usize;
                            let want: Vec<f64> = w.as_array().unwrap()[ctx..]
                                .iter()
                                .map(|x| x.as_f64().unwrap())
                                .collect();
                            let got: Vec<f64> = got["loss_mask"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|x| x.as_f64().unwrap())
                                .collect();
                            assert_eq!(got, want, "{what}: assistant-only loss mask");
                        }
                        "ctx_len" => assert_eq!(&got[key], w, "{what}: {key}"),
                        _ => assert_eq!(ids(&got[key]), ids(w), "{what}: {key}"),
                    }
                }
                equal += 1;
            }
            (Err(_), None) => refused += 1,
            (Ok(got), None) => panic!(
                "{what}: TRL refused ({}) but ours gave {got}",
                case["error"]
            ),
            (Err(e), Some(_)) => panic!("{what}: ours failed: {e:#}"),
        }
    }
    eprintln!("{equal} cases equal to TRL's ids, {refused} refused by both, {skipped} skipped (SmolLM2 absent: run scripts/fetch_smollm2.sh)");
    assert!(equal >= 16, "too few cases compared: {equal}");
}

fn tmp_line(text: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.jsonl");
    std::fs::write(&p, text).unwrap();
    (d, p)
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn malformed_conversations_name_the_line_and_field() {
    let cases: [(&str, &str); 13] = [
        (
            r#"{"prompt": "q", "chat_template_kwargs": 3, "label": "benign"}"#,
            "field `chat_template_kwargs` must be an object",
        ),
        (
            r#"{"prompt": "q", "chat_template_kwargs": {"messages": []}, "label": "benign"}"#,
            "`messages` is set by the renderer itself",
        ),
        (
            r#"{"prompt": "q", "tools": {"name": "f"}, "label": "benign"}"#,
            "field `tools` must be a list of function schemas",
        ),
        (
            r#"{"prompt": "q", "tools": [{"type": "function"}, 3], "label": "benign"}"#,
            "field `tools[1]` must be an object",
        ),
        (
            r#"{"prompt": "q", "tools": "[{", "label": "benign"}"#,
            "field `tools` is a string but not JSON",
        ),
        (
            r#"{"prompt": [], "label": "benign"}"#,
            "field `prompt` is an empty list",
        ),
        (
            r#"{"prompt": [{"role": "user"}], "label": "benign"}"#,
            "field `prompt[0]` has no `content`",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": 3}], "label": "benign"}"#,
            "field `prompt[0].content` must be a string",
        ),
        (
            r#"{"prompt": ["hi"], "label": "benign"}"#,
            "field `prompt[0]` must be an object",
        ),
        (
            r#"{"prompt": 7, "label": "benign"}"#,
            "field `prompt` must be a string or a list of messages",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "label": "benign"}"#,
            "ends with a `system` turn",
        ),
        (
            r#"{"prompt": [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}], "label": "benign"}"#,
            "has no user turn",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": "  "}], "label": "benign"}"#,
            "field `prompt` is empty",
        ),
    ];
    for (line, want) in cases {
        let (_d, p) = tmp_line(&format!(
            "{}\n{line}\n",
            r#"{"prompt": "fine", "label": "benign"}"#
        ));
        let e = err_of(load_prompts(&p));
        assert!(e.contains("bad.jsonl:2") && e.contains(want), "{line}: {e}");
    }
    let (_d, p) = tmp_line(r#"{"chosen": "a", "rejected": "b"}"#);
    assert!(err_of(load_dpo(&p)).contains("missing field `prompt`"));
    let (_d, p) = tmp_line(
        r#"{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]}"#,
    );
    assert!(err_of(load_dpo(&p)).contains("must start with the same turns"));
    let (_d, p) = tmp_line(r#"{"messages": [{"role": "user", "content": "q"}], "prompt": "x"}"#);
    assert!(err_of(load_sft(&p)).contains("not both"));
    let (_d, p) = tmp_line(r#"{"prompt": "q"}"#);
    assert!(err_of(load_sft(&p)).contains("bad.jsonl:1: missing field `completion`"));
}

#[test]
fn conversations_keep_their_fields_and_round_trip() {
    let (_d, p) = tmp_line(
        r#"{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "first"}, {"role": "assistant", "content": "x", "reasoning_content": "r", "name": "bot"}, {"role": "user", "content": "last"}], "label": "harmful", "category": "c"}"#,
    );
    let items = load_prompts(&p).unwrap();
    let it = &items[0];
    assert_eq!(
        it.prompt, "last",
        "judges and retrieval read the last user turn"
    );
    let conv = it.conversation.as_ref().unwrap();
    assert_eq!(conv[2].extra["reasoning_content"], "r");
    assert_eq!(conv[2].extra["name"], "bot");
    // written back and read again: the same item
    let out = p.with_file_name("out.jsonl");
    cada::cada::data::write_prompts(&out, &items).unwrap();
    assert_eq!(load_prompts(&out).unwrap(), items);
    let plain = PromptItem::text("hi", Label::Benign, None);
    assert_eq!(plain.turns(), vec![Message::new("user", "hi")]);
    let (_d2, p2) = tmp_line(
        r#"{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}"#,
    );
    let r = &load_dpo(&p2).unwrap()[0];
    assert_eq!(r.prompt, Turns::Messages(vec![Message::new("user", "q")]));
    assert_eq!(
        r.chosen,
        Turns::Messages(vec![Message::new("assistant", "a")])
    );
    let (_d3, p3) = tmp_line(
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
    );
    assert!(matches!(load_sft(&p3).unwrap()[0].body, SftBody::Messages(ref m) if m.len() == 2));
}

/// The deliberation context (codes and cases) is a system turn before the conversation, merged
/// into the conversation's own system turn when it has one.
#[test]
fn deliberation_system_prompt_merges_into_the_conversation() {
    let m = load_model(&root().join("models/default")).unwrap();
    let render = |turns: &[Message]| {
        cada::cada::chat_data::prompt_text(&m, Some("CODES"), turns, &Default::default()).unwrap()
    };
    assert_eq!(
        render(&[Message::new("user", "q")]),
        "<|im_start|>system\nCODES<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        render(&[Message::new("system", "Be brief."), Message::new("user", "q")]),
        "<|im_start|>system\nCODES\n\nBe brief.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    );
    // an assistant turn last is continued, not closed
    assert_eq!(
        render(&[Message::new("user", "q"), Message::new("assistant", "Once upon")]),
        "<|im_start|>system\nCODES<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nOnce upon"
    );
}
