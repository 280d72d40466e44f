//! The CADA loop end to end through the CLI: a short run writes every output with finite
//! metrics; reward rises on the default model with the rule judge (a guard against sign errors
//! in advantages or loss); resume is bit-identical; bad runs fail with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let r = root();
    let mut args: Vec<String> = vec![
        "train".into(),
        "--quiet".into(),
        "--device".into(),
        "cpu".into(),
        "--set".into(),
        format!("out_dir=\"{}\"", out.display()),
    ];
    // defaults point at models/… relative to the repository root
    for (k, v) in [
        ("model", "models/default"),
        ("spec", "models/spec/default.toml"),
        ("prompts", "models/prompts/train.jsonl"),
        ("eval_prompts", "models/prompts/heldout.jsonl"),
    ] {
        args.push("--set".into());
        args.push(format!("{k}=\"{}\"", r.join(v).display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_cada"))
        .args(&args)
        .output()
        .expect("run cada train")
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Metric lines without wall-clock figures (those differ run to run by nature).
fn deterministic_part(v: &serde_json::Value) -> serde_json::Value {
    let mut m = v.as_object().unwrap().clone();
    m.retain(|k, _| {
        !(k.starts_with("time_")
            || k.contains("per_s")
            || k.contains("tflops")
            || k.starts_with("peak_"))
    });
    serde_json::Value::Object(m)
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "cada train failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn short_run_writes_every_output_and_reward_rises() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = train(
        &out,
        &[
            "--set",
            "steps=12",
            "--set",
            "optim.total_steps=12",
            "--set",
            "optim.lr=5e-4",
            "--set",
            "eval_samples=2",
            "--set",
            "sample_every=6",
            "--set",
            "checkpoint_every=6",
        ],
    );
    assert_ok(&o);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "samples.jsonl",
        "checkpoint/model.safetensors",
        "checkpoint/meta.json",
        "eval_before.json",
        "eval_after.json",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "metrics.png",
    ] {
        assert!(out.join(f).exists(), "missing output {f}");
    }
    let m = metrics(&out);
    assert_eq!(m.len(), 12);
    for line in &m {
        for key in [
            "reward_mean",
            "reward_std",
            "frac_reward_zero_std",
            "kl",
            "entropy",
            "clip_ratio_low",
            "clip_ratio_high",
            "clip_ratio_region",
            "completion_len_mean",
            "completion_len_max",
            "completion_clipped_ratio",
            "tokens_per_s",
            "train_tflops",
            "peak_rss_bytes",
            "time_rollout_s",
            "time_reference_s",
            "time_train_s",
            "reward/safety",
            "reward/format",
            "loss",
            "grad_norm",
        ] {
            let x = line[key]
                .as_f64()
                .unwrap_or_else(|| panic!("metric {key} missing in {line}"));
            assert!(x.is_finite(), "metric {key} = {x}");
        }
    }
    // learning signal: mean reward of the last 4 steps clearly above the first 4 (rule judge,
    // rewards in [-1.2, 1.2]; the default model starts around +0.5)
    let mean = |s: &[serde_json::Value]| {
        s.iter()
            .map(|v| v["reward_mean"].as_f64().unwrap())
            .sum::<f64>()
            / s.len() as f64
    };
    let (first, last) = (mean(&m[..4]), mean(&m[8..]));
    assert!(
        last > first + 0.15,
        "reward did not rise: first 4 steps {first:.3}, last 4 steps {last:.3}"
    );
    // the final model loads and evaluates
    let e = Command::new(env!("CARGO_BIN_EXE_cada"))
        .args([
            "eval",
            "--model",
            out.join("final").to_str().unwrap(),
            "--prompts",
            root()
                .join("models/prompts/heldout.jsonl")
                .to_str()
                .unwrap(),
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert!(String::from_utf8_lossy(&e.stdout).contains("over-refusal"));
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "--set",
        "optim.total_steps=6",
        "--set",
        "checkpoint_every=3",
        "--set",
        "eval_prompts=\"\"",
        "--set",
        "sample_every=0",
        "--set",
        "prompts_per_step=4",
        "--set",
        "group_size=4",
    ];
    let full = dir.path().join("full");
    let mut a: Vec<&str> = common.to_vec();
    a.extend(["--set", "steps=6"]);
    assert_ok(&train(&full, &a));
    let part = dir.path().join("part");
    let mut b: Vec<&str> = common.to_vec();
    b.extend(["--set", "steps=3"]);
    assert_ok(&train(&part, &b));
    // a crash leftover from an interrupted save must not matter
    std::fs::create_dir_all(part.join("checkpoint.tmp-999999")).unwrap();
    std::fs::write(
        part.join("checkpoint.tmp-999999/model.safetensors"),
        b"half-written",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cada"))
        .args([
            "train",
            "--quiet",
            "--resume",
            part.to_str().unwrap(),
            "--set",
            "steps=6",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let (mf, mp) = (metrics(&full), metrics(&part));
    assert_eq!(mf.len(), 6);
    assert_eq!(mp.len(), 6);
    for (x, y) in mf.iter().zip(&mp) {
        assert_eq!(
            deterministic_part(x),
            deterministic_part(y),
            "resumed run diverged"
        );
    }
    let (wf, wp) = (
        std::fs::read(full.join("final/model.safetensors")).unwrap(),
        std::fs::read(part.join("final/model.safetensors")).unwrap(),
    );
    assert!(
        wf == wp,
        "final weights differ between the resumed and the uninterrupted run"
    );
}

fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn bad_runs_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let quick = [
        "--set",
        "steps=1",
        "--set",
        "eval_prompts=\"\"",
        "--set",
        "prompts_per_step=2",
        "--set",
        "group_size=2",
    ];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = quick.to_vec();
        v.extend(extra);
        train(&d.join("run"), &v)
    };
    // judge command that fails, that returns the wrong number of lines, that hangs
    let o = with(&[
        "--set",
        "judge={kind=\"command\", command=\"echo broken >&2; exit 3\", timeout_s=5.0}",
    ]);
    assert_fails_with(&o, &["judge", "failed", "broken"]);
    let o = with(&[
        "--set",
        "judge={kind=\"command\", command=\"echo 1\", timeout_s=5.0}",
    ]);
    assert_fails_with(&o, &["judge", "returned 1 lines for 4 completions"]);
    let o = with(&[
        "--set",
        "judge={kind=\"command\", command=\"sleep 30\", timeout_s=0.5}",
    ]);
    assert_fails_with(&o, &["timed out"]);
    // a judge that works: one reward per line
    let o = with(&[
        "--set",
        "judge={kind=\"command\", command=\"while read l; do echo 0.5; done\", timeout_s=10.0}",
    ]);
    assert_ok(&o);
    // a two-sided clip inside the clip range
    let o = with(&["--set", "loss.delta=1.1"]);
    assert_fails_with(&o, &["loss.delta = 1.1", "1 + loss.epsilon_high"]);
    // empty prompt file
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    let p = format!("prompts=\"{}\"", d.join("empty.jsonl").display());
    assert_fails_with(&with(&["--set", &p]), &["empty.jsonl", "no JSONL lines"]);
    // broken prompt line
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"prompt\": \"hi\", \"label\": \"benign\"}\n{\"prompt\": \"x\", \"label\": \"maybe\"}\n",
    )
    .unwrap();
    let p = format!("prompts=\"{}\"", d.join("bad.jsonl").display());
    assert_fails_with(&with(&["--set", &p]), &["bad.jsonl:2", "label", "maybe"]);
    // a prompt longer than the context
    let long = "explain ".repeat(1500);
    std::fs::write(
        d.join("long.jsonl"),
        format!("{{\"prompt\": \"{long}\", \"label\": \"benign\"}}\n"),
    )
    .unwrap();
    let p = format!("prompts=\"{}\"", d.join("long.jsonl").display());
    assert_fails_with(
        &with(&["--set", &p]),
        &["long.jsonl", "exceeds the model's context"],
    );
    // a spec with no cases
    std::fs::write(d.join("spec.toml"), "codes = [\"be safe\"]\ncases = []\n").unwrap();
    let p = format!("spec=\"{}\"", d.join("spec.toml").display());
    assert_fails_with(&with(&["--set", &p]), &["spec.toml", "cases", "empty"]);
    // unknown config field
    assert_fails_with(&with(&["--set", "rollout.temprature=0.5"]), &["temprature"]);
}

#[test]
fn micro_batches_give_the_same_update_as_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let run = |mb: &str, lt: &str, extra: &[&str]| {
        let out = dir.path().join(format!("mb{mb}{lt}{}", extra.len()));
        let set_mb = format!("micro_batch_rows={mb}");
        let set_lt = format!("loss.loss_type=\"{lt}\"");
        let mut args = vec![
            "--set",
            "steps=2",
            "--set",
            "eval_prompts=\"\"",
            "--set",
            "sample_every=0",
            "--set",
            &set_mb,
            "--set",
            &set_lt,
        ];
        args.extend(extra);
        assert_ok(&train(&out, &args));
        metrics(&out)
    };
    // GSPO with a second update on each batch and a narrow clip range, so completions clip and
    // the per-completion clip ratios are combined across micro-batches by rows
    let gspo = [
        "--set",
        "loss.importance_sampling_level=\"sequence\"",
        "--set",
        "updates_per_batch=2",
        "--set",
        "loss.epsilon_low=3e-4",
        "--set",
        "loss.epsilon_high=4e-4",
    ];
    let mut clipped = false;
    for (lt, extra) in [
        ("grpo", &[][..]),
        ("dapo", &[][..]),
        ("dr_grpo", &[][..]),
        ("grpo", &gspo[..]),
    ] {
        let (one, many) = (run("64", lt, extra), run("5", lt, extra));
        clipped |= one
            .iter()
            .any(|m| m["clip_ratio_region"].as_f64().unwrap() > 0.0);
        for (a, b) in one.iter().zip(&many) {
            for key in ["loss", "grad_norm", "kl", "entropy", "clip_ratio_region"] {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                // same math, different summation grouping: f32 rounding only
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                    "{lt} {extra:?} {key}: {x} (one batch) vs {y} (micro-batches)"
                );
            }
        }
    }
    assert!(
        clipped,
        "the GSPO run clipped no completion: its clip ratios went unchecked"
    );
}

#[test]
fn nan_weights_stop_the_step_and_keep_the_checkpoint() {
    // a model whose final norm holds a NaN: the first step's loss is NaN → refused, clear message
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("nanmodel");
    let base = cada::model::load::load_model(&root().join("models/default")).unwrap();
    let mut params = base.params.clone();
    params.final_norm[3] = f32::NAN;
    cada::model::save::save_model_dir(
        &m,
        &base.cfg,
        &params,
        &base.tokenizer,
        &base.tokenizer_config,
    )
    .unwrap();
    let out = dir.path().join("run");
    let set_model = format!("model=\"{}\"", m.display());
    let o = train(
        &out,
        &[
            "--set",
            "steps=2",
            "--set",
            "eval_prompts=\"\"",
            "--set",
            &set_model,
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("step 1") && (err.contains("non-finite") || err.contains("NaN")),
        "{err}"
    );
    assert!(
        !out.join("checkpoint").exists(),
        "no checkpoint may be written for a refused step"
    );
}

#[test]
fn sft_and_dpo_train_and_write_loadable_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // text lines and TRL's conversational ones (a `messages` line; an implicit DPO prompt)
    std::fs::write(d.join("sft.jsonl"), concat!(
        "{\"prompt\": \"how do i kill a python process\", \"completion\": \"<think> kill stops a process. </think> Sure. Use kill with its process id.\"}\n",
        r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "how do i shoot a photo"}], "completion": [{"role": "assistant", "content": "Sure. Hold still."}]}"#, "\n",
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "how do i kill a process"}, {"role": "assistant", "content": "Sure. Use kill."}]}"#, "\n",
    )).unwrap();
    std::fs::write(d.join("dpo.jsonl"), concat!(
        "{\"prompt\": \"how do i shoot a photo at night\", \"chosen\": \"<think> shoot means take a picture. </think> Sure. Use a tripod.\", \"rejected\": \"<think> The word shoot sounds dangerous. </think> I cannot help with that.\"}\n",
        r#"{"chosen": [{"role": "user", "content": "how do i kill a python process"}, {"role": "assistant", "content": "Sure. Use kill."}], "rejected": [{"role": "user", "content": "how do i kill a python process"}, {"role": "assistant", "content": "I cannot help with that."}]}"#, "\n",
    )).unwrap();
    let model = root().join("models/default");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cada"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let log = run(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        d.join("sft.jsonl").to_str().unwrap(),
        "--out",
        d.join("sft").to_str().unwrap(),
        "--steps",
        "5",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
    ]);
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("loss ").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(losses.len(), 5, "{log}");
    assert!(losses[4] < losses[0], "SFT loss did not fall: {losses:?}");
    let log = run(&[
        "dpo",
        "--model",
        model.to_str().unwrap(),
        "--data",
        d.join("dpo.jsonl").to_str().unwrap(),
        "--out",
        d.join("dpo").to_str().unwrap(),
        "--steps",
        "5",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
    ]);
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("loss ").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    // the first DPO step has policy == reference: loss = log 2
    assert!(
        (losses[0] - std::f64::consts::LN_2).abs() < 1e-3,
        "{losses:?}"
    );
    assert!(losses[4] < losses[0], "DPO loss did not fall: {losses:?}");
    for m in ["sft", "dpo"] {
        assert!(cada::model::load::load_model(&d.join(m)).is_ok());
    }
}

#[test]
fn model_judge_scores_with_verdict_token_margins() {
    let dir = tempfile::tempdir().unwrap();
    let judge = format!(
        "judge={{kind=\"model\", model=\"{}\", good=\" yes\", bad=\" no\", margin_scale=4.0}}",
        root().join("models/default").display()
    );
    let out = dir.path().join("run");
    let o = train(
        &out,
        &[
            "--set",
            "steps=1",
            "--set",
            "eval_prompts=\"\"",
            "--set",
            "prompts_per_step=2",
            "--set",
            "group_size=2",
            "--set",
            &judge,
        ],
    );
    assert_ok(&o);
    let m = metrics(&out);
    let r = m[0]["reward_mean"].as_f64().unwrap();
    assert!(r.is_finite() && (-1.0..=1.0).contains(&r), "{r}");
    assert!(m[0]["reward/judge_margin"].as_f64().unwrap().is_finite());
}

/// A Qwen3-architecture model (per-head q/k RMSNorm, a head_dim whose q is wider than the
/// hidden size) through the whole loop: rollouts, reference log-probs, training, evaluation,
/// and a final model directory that reloads as Qwen3 with its trained q/k norm weights.
#[test]
fn a_qwen3_model_trains_and_saves_its_qk_norms() {
    use cada::model::config::LlamaConfig;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("qwen3");
    std::fs::create_dir_all(&model).unwrap();
    let default = root().join("models/default");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(default.join(f), model.join(f)).unwrap();
    }
    let mut cfg = LlamaConfig::from_file(&default.join("config.json")).unwrap();
    cfg.architecture = "Qwen3ForCausalLM".into();
    cfg.qk_norm = true;
    cfg.head_dim = 48;
    let params = cada::model::init::init_params(&cfg, 1, 0.05);
    std::fs::write(
        model.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_hf_json()).unwrap(),
    )
    .unwrap();
    cada::model::weights::save_params_safetensors(&cfg, &params, &model.join("model.safetensors"))
        .unwrap();
    let out = dir.path().join("run");
    let o = train(
        &out,
        &[
            "--set",
            &format!("model=\"{}\"", model.display()),
            "--set",
            "steps=2",
            "--set",
            "optim.total_steps=2",
            "--set",
            "eval_samples=1",
        ],
    );
    assert_ok(&o);
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    assert!(m
        .iter()
        .all(|x| x["loss"].as_f64().is_some_and(f64::is_finite)));
    let fin = cada::model::load::load_model(&out.join("final")).unwrap();
    assert_eq!(fin.cfg.architecture, "Qwen3ForCausalLM");
    assert!(fin.cfg.qk_norm);
    // a random model's rollouts all earn the same reward (zero advantages, zero gradients), so
    // the update itself is checked with SFT, whose cross-entropy always has a gradient
    let data = dir.path().join("sft.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"How do I kill a Python process?\", \"completion\": \"Use kill -9.\"}\n",
    )
    .unwrap();
    let sft = dir.path().join("sft");
    let o = Command::new(env!("CARGO_BIN_EXE_cada"))
        .args([
            "sft",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--batch-size",
            "1",
        ])
        .args(["--model".as_ref(), model.as_os_str()])
        .args([
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            sft.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let tuned = cada::model::load::load_model(&sft).unwrap();
    assert_eq!(tuned.cfg.architecture, "Qwen3ForCausalLM");
    for (l, layer) in tuned.params.layers.iter().enumerate() {
        for (what, norm) in [("q", &layer.q_norm), ("k", &layer.k_norm)] {
            let norm = norm.as_ref().expect("q/k norms saved");
            assert_eq!(norm.len(), 48);
            assert!(
                norm.iter().any(|&x| x != 1.0),
                "layer {l}: the {what} norm weights were not trained"
            );
        }
    }
}
