//! The real model: SmolLM2-135M-Instruct from `scripts/fetch_smollm2.sh` (CI runs it first).
//! Without the file the tests print that they were skipped and assert nothing else.
//! Checks: transformers parity on the real model (ids, log-probs, logits: the fixture of
//! `scripts/hf_parity_dump.py --smollm2`), greedy chat answers, GGUF path == converted-directory
//! path (tokens, generations and log-probs, bit-identical through an f32 conversion), tokenizer
//! round trips.

use std::path::PathBuf;
use std::process::Command;

fn gguf() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent (run scripts/fetch_smollm2.sh)",
            p.display()
        );
        None
    }
}

fn converted(g: &std::path::Path) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("smollm2");
    cada::model::convert::run_convert(g, &out, cada::model::convert::SaveDtype::F32).unwrap();
    (d, out)
}

fn cada(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_cada"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cada {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn greedy_chat_is_sensible_and_identical_through_gguf_and_converted_dir() {
    let Some(g) = gguf() else { return };
    let (_d, dir) = converted(&g);
    for (prompt, must) in [
        ("What is the capital of France?", "Paris"),
        ("What is 2 + 2? Answer with a number.", "4"),
    ] {
        let run = |m: &str| {
            cada(&[
                "generate",
                "--model",
                m,
                "--chat",
                "--prompt",
                prompt,
                "--temperature",
                "0",
                "--max-new-tokens",
                "24",
                "--device",
                "cpu",
            ])
        };
        let (a, b) = (run(g.to_str().unwrap()), run(dir.to_str().unwrap()));
        assert!(a.contains(must), "{prompt:?} → {a:?}");
        assert_eq!(a, b, "GGUF and converted directory disagree");
    }
}

#[test]
fn score_logprobs_are_finite_nonpositive_and_identical_across_paths() {
    let Some(g) = gguf() else { return };
    let (d, dir) = converted(&g);
    let input = d.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris.\"}\n{\"prompt\": \"How do I kill a Python process?\", \"completion\": \" Use the kill command with its PID.\"}\n").unwrap();
    let run = |m: &str| {
        cada(&[
            "score",
            "--model",
            m,
            "--input",
            input.to_str().unwrap(),
            "--device",
            "cpu",
        ])
    };
    let (a, b) = (run(g.to_str().unwrap()), run(dir.to_str().unwrap()));
    assert_eq!(
        a, b,
        "log-probs differ between the GGUF and converted paths"
    );
    for line in a.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for lp in v["logprobs"].as_array().unwrap() {
            let x = lp.as_f64().unwrap();
            assert!(x.is_finite() && x <= 0.0, "{x}");
        }
    }
    // " Paris" after "The capital of France is" is likely for a trained model
    let first: serde_json::Value = serde_json::from_str(a.lines().next().unwrap()).unwrap();
    assert!(first["logprobs"][0].as_f64().unwrap() > -3.0, "{first}");
}

#[test]
fn tokenizer_from_gguf_round_trips_and_matches_the_converted_one() {
    let Some(g) = gguf() else { return };
    let (_d, dir) = converted(&g);
    let a = cada::model::load::load_model(&g).unwrap();
    let b = cada::model::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let texts = [
        "Hello, world!",
        "The year 2026 has 365 days; π ≈ 3.14159.",
        "Unicode: café naïve 東京 Привет 🙂",
        "def add(a, b):\n    return a + b\n",
        "   leading spaces and\ttabs\n\n\nnewlines",
        "<|im_start|>user\nHi<|im_end|>\n",
        "kill -9 1234 && echo done",
        "CamelCaseIdentifier snake_case_identifier",
        "a    b     c",
        "¿Qué tal? Ça va!",
        "1234567890",
        "",
    ];
    for t in texts {
        let ids = a.tokenizer.encode(t, false).unwrap();
        assert_eq!(ids, b.encode(t, false).unwrap(), "{t:?}");
        assert_eq!(
            a.tokenizer.decode(&ids, false).unwrap(),
            t,
            "round trip of {t:?}"
        );
    }
    // known ids: SmolLM2's config.json has bos_token_id 1 (<|im_start|>), eos_token_id 2 (<|im_end|>),
    // and <|endoftext|> is id 0; common words are single tokens
    let t = &a.tokenizer;
    assert_eq!(
        t.encode("<|endoftext|><|im_start|><|im_end|>", false)
            .unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(a.cfg.bos_token_id, Some(1));
    assert_eq!(a.cfg.eos_token_ids, vec![2]);
    assert_eq!(t.encode("Hello world", false).unwrap().len(), 2);
    // special tokens are single ids; digits are split one per token (smollm pre-tokenizer)
    assert_eq!(
        a.tokenizer.encode("<|im_start|>", false).unwrap(),
        vec![a.tokenizer.token_to_id("<|im_start|>").unwrap()]
    );
    assert_eq!(a.tokenizer.encode("1234", false).unwrap().len(), 4);
}

/// The real model against Hugging Face transformers: scripts/hf_parity_dump.py --smollm2 ran
/// transformers 5.24 in float64 on the same converted weights (tests/fixtures/hf_parity/
/// smollm2/). Our chat template must render transformers' text, our tokenizer give its ids, our
/// f32 forward its next-token log-probs, log-sum-exps, argmaxes and last-position logits over
/// 30 layers.
#[test]
fn matches_transformers_on_the_real_model() {
    use cada::backend::cpu::Cpu;
    use cada::backend::Backend;
    use cada::model::llama::{shifted_targets, Llama};
    use safetensors::SafeTensors;
    let Some(g) = gguf() else { return };
    let (_tmp, dir) = converted(&g);
    let m = cada::model::load::load_model(&dir).unwrap();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_parity/smollm2");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(fixture.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str| -> Vec<f64> {
        let t = st.tensor(name).unwrap();
        match t.dtype() {
            safetensors::Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            d => panic!("{name}: dtype {d:?}"),
        }
    };
    // the chat template: minijinja here, jinja2 in transformers
    for (k, conv) in meta["chat"].as_array().unwrap().iter().enumerate() {
        let messages: Vec<cada::model::chat::Message> = conv["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                cada::model::chat::Message::new(
                    x["role"].as_str().unwrap(),
                    x["content"].as_str().unwrap(),
                )
            })
            .collect();
        let ours = m.chat.render(&messages, true).unwrap();
        assert_eq!(ours, conv["rendered"].as_str().unwrap(), "conversation {k}");
    }
    let be = Cpu::new();
    let model = Llama::from_host(&be, m.cfg.clone(), &m.params).unwrap();
    for (i, text) in meta["texts"].as_array().unwrap().iter().enumerate() {
        let want_ids: Vec<u32> = meta["ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ids = m.tokenizer.encode(text.as_str().unwrap(), false).unwrap();
        assert_eq!(
            ids, want_ids,
            "text {i}: token ids differ from transformers'"
        );
        let t = ids.len();
        let fwd = model.forward(&be, &ids, 1, t).unwrap();
        let targets = be.upload_ids(&shifted_targets(&ids, 1, t)).unwrap();
        let (lp, _, lse) = model.token_logprobs(&be, &fwd, &targets, 1.0).unwrap();
        let (want_lp, want_lse) = (tensor(&format!("logp.{i}")), tensor(&format!("lse.{i}")));
        // f32 through 30 layers against f64: |Δlogp| ≤ 8.7e-6, |Δlse| ≤ 3e-5 seen
        let close = |what: &str, got: &[f32], want: &[f64]| -> f64 {
            let mut worst = 0.0f64;
            for (p, (g, w)) in got.iter().zip(want).enumerate() {
                let e = (*g as f64 - w).abs();
                assert!(
                    e < 3e-5 * (1.0 + w.abs()),
                    "text {i} pos {p}: {what} {g} vs {w}"
                );
                worst = worst.max(e);
            }
            worst
        };
        // the last position has no next token
        let worst = (
            close("logp", &lp[..t - 1], &want_lp),
            close("lse", &lse[..t], &want_lse),
        );
        let rows: Vec<usize> = (0..t).collect();
        let logits = be
            .download(&model.logits_rows(&be, &fwd.hidden, &rows).unwrap())
            .unwrap();
        let v = m.cfg.vocab_size;
        let argmax: Vec<f64> = (0..t)
            .map(|r| {
                let row = &logits[r * v..(r + 1) * v];
                (0..v).fold(0, |b, j| if row[j] > row[b] { j } else { b }) as f64
            })
            .collect();
        assert_eq!(
            argmax,
            tensor(&format!("argmax.{i}")),
            "text {i}: argmax per position"
        );
        let last = &logits[(t - 1) * v..];
        let want = tensor(&format!("last_logits.{i}"));
        let num: f64 = last
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        let rel = (num / den).sqrt();
        assert!(
            rel < 1e-5,
            "text {i}: last-position logits rel err {rel:.2e}"
        );
        println!(
            "text {i} ({t} tokens): ids equal, worst |Δlogp| {:.1e}, |Δlse| {:.1e}, argmax equal, last logits rel {rel:.1e}",
            worst.0, worst.1
        );
    }
}

/// The bf16 KV cache on the real model, through its CPU twin (`Cpu::with_bf16_kv_cache`, the
/// rounding the CUDA `_bf16_kv` kernels apply): 3 prompts, 24 steps, both decoders fed the
/// f32 cache's greedy tokens, so each step's logits compare on the same context. What a user
/// of `CADA_KV_CACHE=bf16` trades: the logits' relative error and the greedy tokens that flip
/// (bounds beside the asserts).
#[test]
fn bf16_kv_cache_twin_on_the_real_model() {
    use cada::backend::cpu::Cpu;
    use cada::model::llama::{Decoder, Llama};
    let Some(g) = gguf() else { return };
    let m = cada::model::load::load_model(&g).unwrap();
    let (be, be16) = (Cpu::new(), Cpu::with_bf16_kv_cache());
    let model = Llama::from_host(&be, m.cfg.clone(), &m.params).unwrap();
    let model16 = Llama::from_host(&be16, m.cfg.clone(), &m.params).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "How do I bake bread at home?",
        "Explain photosynthesis to a child.",
        "Write a haiku about the sea.",
    ]
    .iter()
    .map(|q| {
        let msg = [cada::model::chat::Message::new("user", q)];
        let text = m.chat.render(&msg, true).unwrap();
        m.tokenizer.encode(&text, false).unwrap()
    })
    .collect();
    let (n, steps, vocab) = (prompts.len(), 24, m.cfg.vocab_size);
    let mut d = Decoder::new(&be, &model, n, 96).unwrap();
    let mut d16 = Decoder::new(&be16, &model16, n, 96).unwrap();
    let mut logits = d.prefill(&prompts).unwrap();
    let mut logits16 = d16.prefill(&prompts).unwrap();
    let mut pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let argmax = |row: &[f32]| {
        (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
    };
    let (mut worst, mut flips) = (0.0f64, 0);
    for step in 0..steps {
        let toks: Vec<u32> = (0..n)
            .map(|b| argmax(&logits[b * vocab..(b + 1) * vocab]))
            .collect();
        if step > 0 {
            let (num, den) = logits
                .iter()
                .zip(&logits16)
                .fold((0.0, 0.0), |(n, d), (a, b)| {
                    (n + ((a - b) as f64).powi(2), d + (*a as f64).powi(2))
                });
            worst = worst.max((num / den).sqrt());
            flips += (0..n)
                .filter(|&b| argmax(&logits16[b * vocab..(b + 1) * vocab]) != toks[b])
                .count();
        }
        logits = d.step(&toks, &pos).unwrap().clone();
        logits16 = d16.step(&toks, &pos).unwrap().clone();
        pos.iter_mut().for_each(|p| *p += 1);
    }
    println!(
        "SmolLM2, bf16 KV cache twin vs f32 cache over {} greedy steps × {n}: logits within \
         {worst:.2e}, {flips} argmax flips",
        steps - 1
    );
    assert!(worst > 0.0, "the twin rounded nothing");
    // measured: 6.9e-3 and no flip in 69 (deterministic: fixed prompts, the CPU's fixed order)
    assert!(
        worst <= 2e-2,
        "bf16 KV cache: logits {worst:.3e} off the f32 cache's"
    );
    assert!(
        flips <= 3,
        "bf16 KV cache: {flips} of {} greedy tokens flipped",
        (steps - 1) * n
    );
}
