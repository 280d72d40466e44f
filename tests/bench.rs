//! The bench harness on the CPU: the report format, the baseline gate (a slower kernel, a
//! vanished kernel and a broken timing all fail it), the peer ratio table, the shape list the
//! peer script reads, and `cada bench kernels|step|shapes|report` end to end.

use cada::bench::report::{compare, parse_threshold, peer_rows, Record, Report, Roofline};
use std::process::{Command, Output};

fn cada(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cada"))
        .args(args)
        .output()
        .expect("run cada")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(device: &str, records: Vec<Record>) -> Report {
    Report {
        schema: cada::bench::report::SCHEMA,
        tool: "test".into(),
        device: device.into(),
        driver: "-".into(),
        date: "2026-12-01 00:00:00".into(),
        commit: "abc".into(),
        set: "smoke".into(),
        roofline: Roofline::default(),
        records,
    }
}

fn rec(id: &str, variant: &str, ms: f64) -> Record {
    Record::new(id.into(), variant, &[ms], 1e9, 0.0)
}

#[test]
fn thresholds_parse_as_fractions() {
    assert_eq!(parse_threshold("5%").unwrap(), 0.05);
    assert_eq!(parse_threshold("5").unwrap(), 0.05);
    assert_eq!(parse_threshold("0.05").unwrap(), 0.05);
    assert_eq!(parse_threshold(" 12.5 % ").unwrap(), 0.125);
    assert!(parse_threshold("fast").is_err());
    assert!(parse_threshold("-3%").is_err());
}

#[test]
fn records_derive_rates_and_medians() {
    let mut r = Record::new("x".into(), "cpu", &[3.0, 1.0, 2.0], 2e9, 4e9);
    assert_eq!(r.median_ms, 2.0);
    assert_eq!(r.min_ms, 1.0);
    assert_eq!(r.reps, 3);
    assert!((r.tflops - 1.0).abs() < 1e-12); // 2e9 FLOP in 2 ms
    assert!((r.gbps - 2000.0).abs() < 1e-9); // 4e9 B in 2 ms
    let roof = Roofline {
        copy_gbps: 4000.0,
        gemm_tflops: 4.0,
        ..Default::default()
    };
    r.set_roofline(&roof);
    assert!((r.roofline_fraction - 0.25).abs() < 1e-12); // compute-bound: against the GEMM rate
    r.flops = 0.0;
    r.set_roofline(&roof);
    assert!((r.roofline_fraction - 0.5).abs() < 1e-12); // bandwidth-bound: against the copy
}

#[test]
fn gate_fails_on_slower_missing_or_broken_kernels() {
    let base = report(
        "gpu",
        vec![
            rec("a", "mma", 1.0),
            rec("b", "cuda", 2.0),
            rec("c", "cuda", 1.0),
        ],
    );
    // within the threshold, faster, and a new record: passes
    let ok = report(
        "gpu",
        vec![
            rec("a", "mma", 1.04),
            rec("b", "cuda", 1.5),
            rec("c", "cuda", 1.0),
            rec("new", "cuda", 9.0),
        ],
    );
    let g = compare(&ok, &base, 0.05).unwrap();
    assert!(g.passed(), "{}", g.to_text());
    assert_eq!(g.compared.len(), 3);

    let slower = report(
        "gpu",
        vec![
            rec("a", "mma", 1.2),
            rec("b", "cuda", 2.0),
            rec("c", "cuda", 1.0),
        ],
    );
    let g = compare(&slower, &base, 0.05).unwrap();
    assert!(!g.passed());
    let regressed: Vec<_> = g.compared.iter().filter(|c| c.regressed).collect();
    assert_eq!(regressed.len(), 1);
    assert_eq!(regressed[0].id, "a");
    assert!(g.to_text().contains("SLOWER"));

    let vanished = report("gpu", vec![rec("a", "mma", 1.0), rec("b", "cuda", 2.0)]);
    let g = compare(&vanished, &base, 0.05).unwrap();
    assert!(!g.passed());
    assert_eq!(g.missing, vec!["c [cuda]".to_string()]);

    let mut broken = ok.clone();
    broken.records[0].median_ms = f64::NAN;
    assert!(!compare(&broken, &base, 0.05).unwrap().passed());

    let other_device = report("cpu", ok.records.clone());
    let e = compare(&other_device, &base, 0.05).unwrap_err().to_string();
    assert!(e.contains("same device"), "{e}");
}

#[test]
fn peer_rows_take_our_fastest_variant() {
    let ours = report(
        "gpu",
        vec![
            rec("att", "simt", 4.0),
            rec("att", "mma", 1.0),
            rec("lp", "cuda", 2.0),
        ],
    );
    let peers = report(
        "gpu",
        vec![
            rec("att", "sdpa_flash", 2.0),
            rec("att", "sdpa_cudnn", 1.5),
            rec("other", "x", 1.0),
        ],
    );
    let rows = peer_rows(&ours, &peers);
    assert_eq!(rows.len(), 1, "only ids both sides measured");
    assert_eq!(rows[0].ours_variant, "mma");
    assert_eq!(rows[0].peers.len(), 2);
    assert!((rows[0].peers[0].2 - 2.0).abs() < 1e-12); // 2 ms peer / 1 ms ours
}

#[test]
fn shape_ids_are_unique_in_every_set() {
    for set in [
        cada::bench::shapes::ShapeSet::Full,
        cada::bench::shapes::ShapeSet::Smoke,
    ] {
        let v = serde_json::to_value(cada::bench::shapes::shapes(set)).unwrap();
        let obj = v.as_object().unwrap();
        for (op, list) in obj {
            let Some(list) = list.as_array() else {
                continue;
            };
            let ids: Vec<&str> = list.iter().map(|e| e[0].as_str().unwrap()).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), ids.len(), "{op}: duplicate shape ids {ids:?}");
            assert!(!ids.is_empty(), "{op}: no shapes in {set:?}");
        }
    }
}

#[test]
fn bench_kernels_writes_a_report_and_gates_against_a_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.json");
    let out_s = out.to_str().unwrap();
    let o = cada(&[
        "bench", "kernels", "--device", "cpu", "--set", "smoke", "--json", out_s,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r = Report::load(&out).unwrap();
    assert_eq!(r.set, "smoke");
    assert!(r.roofline.copy_gbps > 0.0 && r.roofline.gemm_tflops > 0.0);
    for op in [
        "attention.fwd/",
        "attention.fwd_bwd/",
        "fused_logprob.fwd_bwd/",
        "grpo_loss.fwd_bwd/",
        "logprob_grpo.fwd_bwd/",
        "rmsnorm.bwd/",
        "linear.fwd/",
        "swiglu.bwd/",
        "rope.fwd/",
        "adamw.step/",
        "decode_attention.fwd/",
        "sample.",
    ] {
        assert!(
            r.records.iter().any(|x| x.id.starts_with(op)),
            "no record for {op}"
        );
    }
    for x in &r.records {
        assert!(x.median_ms > 0.0 && x.median_ms.is_finite(), "{x:?}");
        assert!(x.reps >= 3, "{x:?}");
        assert!(x.flops > 0.0 || x.bytes > 0.0, "{x:?} counts no work");
        assert!(x.roofline_fraction > 0.0, "{x:?}");
    }

    // the same kernels against a baseline that claims they ran 1000× faster: the gate fails
    let mut fast = r.clone();
    for x in &mut fast.records {
        x.median_ms /= 1000.0;
    }
    let fast_path = dir.path().join("fast.json");
    fast.save(&fast_path).unwrap();
    let o = cada(&[
        "bench",
        "kernels",
        "--device",
        "cpu",
        "--set",
        "smoke",
        "--filter",
        "grpo_loss",
        "--baseline",
        fast_path.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("SLOWER") && t.contains("MISSING"), "{t}");
    assert!(!t.contains("panicked"), "{t}");

    // against itself with a generous threshold, filtered runs only compare what they ran …
    let o = cada(&[
        "bench",
        "kernels",
        "--device",
        "cpu",
        "--filter",
        "grpo_loss",
        "--json",
        dir.path().join("g.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cada(&[
        "bench",
        "kernels",
        "--device",
        "cpu",
        "--filter",
        "grpo_loss",
        "--baseline",
        dir.path().join("g.json").to_str().unwrap(),
        "--max-regression",
        "1000%",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("baseline gate: passed"));

    // … and a bad threshold or a file that is not a report is a clear error
    let o = cada(&["bench", "kernels", "--max-regression", "lots"]);
    assert!(!o.status.success() && text(&o).contains("--max-regression"));
    std::fs::write(dir.path().join("bad.json"), "{\"schema\": 1}").unwrap();
    let o = cada(&[
        "bench",
        "kernels",
        "--baseline",
        dir.path().join("bad.json").to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("bad.json") && !t.contains("panicked"),
        "{t}"
    );
}

#[test]
fn bench_report_prints_peer_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let files = [
        ("a.json", rec("attention.fwd/x", "mma", 1.0)),
        ("s.json", rec("rollout/m/B1", "cada", 4.0)),
        ("b.json", rec("attention.fwd/x", "sdpa_cudnn", 1.5)),
        ("h.json", rec("rollout/m/B1", "hf_generate_static", 2.0)),
    ];
    for (name, r) in &files {
        report("gpu", vec![r.clone()])
            .save(std::path::Path::new(&path(name)))
            .unwrap();
    }
    let o = cada(&[
        "bench",
        "report",
        "--ours",
        &path("a.json"),
        &path("s.json"),
        "--peers",
        &path("b.json"),
        &path("h.json"),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("| attention.fwd/x | mma |") && t.contains("1.50×"),
        "{t}"
    );
    // records of the second files are pooled; a peer faster than us reads below 1
    assert!(
        t.contains("| rollout/m/B1 | cada |") && t.contains("0.50×"),
        "{t}"
    );
}

#[test]
fn bench_shapes_lists_the_full_set_for_the_peer_script() {
    let o = cada(&["bench", "shapes", "--set", "full"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let att = v["attention"].as_array().unwrap();
    assert_eq!(att.len(), 15, "3 head configs × 5 lengths");
    assert!(att
        .iter()
        .any(|a| a[0] == "hd128/gqa32-8/T8192/B2" && a[1]["head_dim"] == 128));
    assert!(v["fused_logprob"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a[0] == "N16384/D896/V151936"));
}

#[test]
fn bench_step_times_the_three_phases() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("step.json");
    let o = cada(&[
        "bench",
        "step",
        "--records",
        records.to_str().unwrap(),
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--prompts",
        "2",
        "--group",
        "2",
        "--prompt-len",
        "8",
        "--new-tokens",
        "8",
        "--micro-batch-rows",
        "2",
        "--repeats",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rows"], 4);
    assert_eq!(v["random_weights"], true);
    for k in [
        "rollout_s",
        "reference_s",
        "train_s",
        "rollout_tokens_per_s",
        "train_tokens_per_s",
        "train_tflops",
    ] {
        let x = v[k].as_f64().unwrap();
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    assert!(v["train_mfu"].is_null(), "no dense peak is known for a CPU");
    assert!(v["peak_memory_bytes"].as_u64().unwrap() > 0);
    let r = Report::load(&records).unwrap();
    let ids: Vec<&str> = r.records.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["rollout/tiny/B4/P8/N8", "train_step/tiny/B4/T16"]);
    assert!(r.records.iter().all(|x| x.median_ms > 0.0));
    // the CPU has no settings to name: the plain variant
    assert_eq!(v["settings"], serde_json::json!([]));
    assert!(r.records.iter().all(|x| x.variant == "cada"));

    let o = cada(&["bench", "step", "--shape", "gpt5"]);
    assert!(!o.status.success() && text(&o).contains("known shapes"));
    let o = cada(&["bench", "step"]);
    assert!(!o.status.success() && text(&o).contains("--model DIR or --shape"));
}

/// The peer script runs only on the GPU machine (it needs torch and CUDA); here it must at
/// least compile, so a syntax error cannot reach a device session.
#[test]
fn peer_script_compiles() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/peers.py");
    let o = Command::new("python3")
        .args([
            "-c",
            "import ast,sys; ast.parse(open(sys.argv[1]).read())",
            script,
        ])
        .output();
    match o {
        Ok(o) => assert!(o.status.success(), "{}", text(&o)),
        Err(e) => println!("peer_script_compiles: skipped: no python3 ({e})"),
    }
}
