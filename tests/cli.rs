//! The CLI end to end on a tiny model directory written by the test: tokenize, generate, score,
//! info, and bad input → a clear error naming the file and the field, exit code ≠ 0, no panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn cada(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cada"))
        .args(args)
        .output()
        .expect("run cada")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Asserts a clean failure whose message contains every `needle`.
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "must not panic: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model_dir(dir.path(), false, true);
    dir
}

#[test]
fn tokenize_generate_score_info_work() {
    let dir = model_dir();
    let m = dir.path().to_str().unwrap();
    let o = cada(&[
        "tokenize",
        "--model",
        m,
        "--text",
        "The capital of France is Paris.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<u32> = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(!ids.is_empty());

    // greedy is deterministic
    let g = |seed: &str| {
        cada(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "How do I kill",
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--seed",
            seed,
            "--device",
            "cpu",
        ])
    };
    let (a, b) = (g("1"), g("2"));
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    let chat = cada(&[
        "generate",
        "--model",
        m,
        "--chat",
        "--prompt",
        "hi",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--max-new-tokens",
        "6",
    ]);
    assert!(chat.status.success(), "{}", stderr(&chat));

    let input = dir.path().join("in.jsonl");
    // a conversational line, and the same split given as ids (as SFT tokenizes it)
    let conv = r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I kill a process?"}], "completion": "Use kill."}"#;
    let loaded = cada::model::load::load_model(dir.path()).unwrap();
    let rec = cada::cada::data::SftRecord {
        at: "test".into(),
        inputs: Default::default(),
        body: cada::cada::data::SftBody::PromptCompletion {
            prompt: cada::cada::data::Turns::Messages(vec![
                cada::model::chat::Message::new("system", "Be brief."),
                cada::model::chat::Message::new("user", "How do I kill a process?"),
            ]),
            completion: cada::cada::data::Turns::Text("Use kill.".into()),
        },
    };
    let seq = cada::cada::chat_data::sft_seq(&loaded, &rec).unwrap();
    let as_ids = serde_json::json!({"prompt_ids": seq.ctx, "completion_ids": seq.completion});
    std::fs::write(&input, format!("{{\"prompt\": \"How do I kill\", \"completion\": \" a process\"}}\n{{\"prompt_ids\": [1, 2, 3], \"completion_ids\": [4, 5]}}\n{conv}\n{as_ids}\n")).unwrap();
    let out = dir.path().join("out.jsonl");
    let o = cada(&[
        "score",
        "--model",
        m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--temperature",
        "0.7",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["completion_ids"], serde_json::json!([4, 5]));
    assert_eq!(
        lines[2], lines[3],
        "the conversational line scores as its ids do"
    );
    let text = loaded.tokenizer.decode(&seq.completion, false).unwrap();
    assert_eq!(
        text, "Use kill.<|im_end|>\n",
        "the template's end of turn is scored"
    );
    for l in &lines {
        let lps: Vec<f64> = l["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(lps.len(), l["completion_ids"].as_array().unwrap().len());
        assert!(lps.iter().all(|x| x.is_finite() && *x <= 0.0), "{lps:?}");
        let sum: f64 = lps.iter().sum();
        assert!((sum - l["sum_logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
    let o = cada(&["info", "--model", m]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("LlamaForCausalLM") && stdout(&o).contains("training memory"));
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn chat_template_kwargs_flag_is_checked() {
    let dir = model_dir();
    let m = dir.path().to_str().unwrap();
    let gen = |kwargs: &str| {
        cada(&[
            "generate",
            "--model",
            m,
            "--chat",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
            "--temperature",
            "0",
            "--device",
            "cpu",
            "--chat-template-kwargs",
            kwargs,
        ])
    };
    let o = gen(r#"{"enable_thinking": false}"#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fails_with(&gen("[1, 2]"), &["--chat-template-kwargs", "JSON object"]);
    assert_fails_with(
        &gen("{enable_thinking"),
        &["--chat-template-kwargs", "not JSON"],
    );
    assert_fails_with(
        &gen(r#"{"messages": []}"#),
        &["--chat-template-kwargs", "messages"],
    );
    // every command that renders chat takes the same flag and checks it before anything else
    let data = dir.path().join("none.jsonl");
    let data = data.to_str().unwrap();
    for cmd in [
        vec!["eval", "--prompts", data],
        vec!["sft", "--data", data, "--out", data],
        vec!["dpo", "--data", data, "--out", data],
    ] {
        let mut args = cmd.clone();
        args.extend(["--model", m, "--chat-template-kwargs", "[1, 2]"]);
        assert_fails_with(&cada(&args), &["--chat-template-kwargs", "JSON object"]);
    }
}

#[test]
fn bad_model_inputs_give_clear_errors() {
    // missing directory
    let o = cada(&["tokenize", "--model", "/nonexistent/model", "--text", "x"]);
    assert_fails_with(&o, &["/nonexistent/model"]);

    // unknown architecture
    let dir = model_dir();
    edit_config(dir.path(), |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let o = cada(&[
        "tokenize",
        "--model",
        dir.path().to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert_fails_with(&o, &["config.json", "architectures", "GPT2LMHeadModel"]);

    // missing field
    let dir = model_dir();
    edit_config(dir.path(), |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    assert_fails_with(
        &cada(&[
            "tokenize",
            "--model",
            dir.path().to_str().unwrap(),
            "--text",
            "x",
        ]),
        &["config.json", "hidden_size"],
    );

    // a tensor with the wrong shape (config says a bigger intermediate size)
    let dir = model_dir();
    edit_config(dir.path(), |v| {
        v["intermediate_size"] = serde_json::json!(50)
    });
    assert_fails_with(
        &cada(&[
            "tokenize",
            "--model",
            dir.path().to_str().unwrap(),
            "--text",
            "x",
        ]),
        &["model.safetensors", "gate_proj", "shape"],
    );

    // a missing tensor (config asks for qkv bias the file lacks)
    let dir = model_dir();
    edit_config(dir.path(), |v| {
        v["attention_bias"] = serde_json::json!(true)
    });
    assert_fails_with(
        &cada(&[
            "tokenize",
            "--model",
            dir.path().to_str().unwrap(),
            "--text",
            "x",
        ]),
        &["model.safetensors", "missing tensor", "q_proj.bias"],
    );

    // truncated safetensors
    let dir = model_dir();
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(
        &cada(&[
            "tokenize",
            "--model",
            dir.path().to_str().unwrap(),
            "--text",
            "x",
        ]),
        &["model.safetensors"],
    );

    // tokenizer whose ids do not fit the model's vocab
    let dir = model_dir();
    edit_config(dir.path(), |v| v["vocab_size"] = serde_json::json!(40));
    assert_fails_with(
        &cada(&[
            "tokenize",
            "--model",
            dir.path().to_str().unwrap(),
            "--text",
            "x",
        ]),
        &["tokenizer.json", "vocab_size"],
    );
}

#[test]
fn bad_score_inputs_give_clear_errors() {
    let dir = model_dir();
    let m = dir.path().to_str().unwrap();
    let input = dir.path().join("bad.jsonl");
    let run = |content: &str| {
        std::fs::write(&input, content).unwrap();
        cada(&["score", "--model", m, "--input", input.to_str().unwrap()])
    };
    assert_fails_with(
        &run("{\"prompt\": \"a\", \"completion\": \"b\"}\nnot json\n"),
        &["bad.jsonl:2", "not valid JSON"],
    );
    assert_fails_with(
        &run("{\"prompt\": \"a\"}\n"),
        &["bad.jsonl:1", "completion"],
    );
    assert_fails_with(
        &run("{\"prompt_ids\": [1], \"completion_ids\": [999999]}\n"),
        &["bad.jsonl:1", "completion_ids", "999999", "vocab_size"],
    );
    assert_fails_with(&run(""), &["bad.jsonl", "no input lines"]);
    assert_fails_with(
        &cada(&["score", "--model", m, "--input", "/nonexistent.jsonl"]),
        &["/nonexistent.jsonl"],
    );
    // this test binary is built without the `cuda` feature: asking for the GPU is a clear error
    // naming the rebuild, never a silent CPU run
    assert_fails_with(
        &cada(&[
            "generate", "--model", m, "--prompt", "x", "--device", "cuda",
        ]),
        &["--device cuda", "--features cuda"],
    );
}
