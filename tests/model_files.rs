//! Loading a model directory on the CPU: a directory written here loads with its weights bit-exact
//! and its chat template; the BPE tokenizer round-trips; config.json parsing (Llama 3 RoPE
//! scaling, transformers 5's rope_parameters) and every refusal (unknown fields the forward
//! lacks, tensors the config does not use), each naming the file and the field.

mod common;

use common::*;

#[test]
fn model_dir_written_by_the_test_loads_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model_dir(dir.path(), true, false);
    let m = cada::model::load::load_model(dir.path()).unwrap();
    assert_eq!(m.cfg, cfg);
    let want = random_params(&cfg, 7);
    for (a, b) in m.params.tensors().iter().zip(want.tensors()) {
        assert_eq!(
            *a, b,
            "weights must round-trip bit-exactly through safetensors"
        );
    }
    // the chat template renders ChatML and the stop ids include <|im_end|>
    let text = m
        .chat
        .render(&[cada::model::chat::Message::new("user", "hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(m
        .stop_ids()
        .contains(&m.tokenizer.token_to_id("<|im_end|>").unwrap()));
}

#[test]
fn tokenizer_round_trips_and_special_tokens_are_single_ids() {
    let texts: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
    let tok = cada::model::tokenizer_train::train_bpe_tokenizer(&texts, 300).unwrap();
    for s in CORPUS.iter().chain(
        [
            "  leading and   runs of   spaces\t\ttabs\n\nnewlines",
            "<|im_start|>user\nhi<|im_end|>",
        ]
        .iter(),
    ) {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), *s, "round trip of {s:?}");
    }
    let ids = tok.encode("<|im_start|>user", false).unwrap();
    assert_eq!(ids[0], tok.token_to_id("<|im_start|>").unwrap());
    // known ids: special tokens come first, in the order they were declared
    for (i, t) in cada::model::tokenizer_train::DEFAULT_SPECIAL_TOKENS
        .iter()
        .enumerate()
    {
        assert_eq!(tok.token_to_id(t), Some(i as u32), "{t}");
    }
}

#[test]
fn config_parsing_llama3_rope_scaling_and_errors() {
    let base = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    });
    let c = cada::model::config::LlamaConfig::from_json(&base, "config.json").unwrap();
    assert_eq!(c.head_dim, 16);
    let inv = c.rope_inv_freq();
    // transformers' llama3 rule, per frequency: high frequencies kept, low ones divided by
    // `factor`, smooth interpolation between (wavelengths vs 8192/4 and 8192/1)
    for (i, &f) in inv.iter().enumerate() {
        let b = 1.0 / 500000f64.powf(2.0 * i as f64 / 16.0);
        let wl = 2.0 * std::f64::consts::PI / b;
        let want = if wl < 2048.0 {
            b
        } else if wl > 8192.0 {
            b / 8.0
        } else {
            let s = (8192.0 / wl - 1.0) / 3.0;
            (1.0 - s) * b / 8.0 + s * b
        };
        assert!(
            (f as f64 - want).abs() <= 1e-6 * want,
            "freq {i}: {f} vs {want}"
        );
    }
    let mut q = base.clone();
    q["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    q.as_object_mut().unwrap().remove("rope_scaling");
    assert!(
        cada::model::config::LlamaConfig::from_json(&q, "config.json")
            .unwrap()
            .attention_bias,
        "Qwen2 has qkv bias by default"
    );
    let mut bad = base.clone();
    bad["num_key_value_heads"] = serde_json::json!(3);
    let e = cada::model::config::LlamaConfig::from_json(&bad, "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("num_key_value_heads"),
        "{e}"
    );
    let mut bad = base.clone();
    bad["rope_scaling"]["rope_type"] = serde_json::json!("yarn");
    let e = cada::model::config::LlamaConfig::from_json(&bad, "config.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
}

/// transformers 5 writes RoPE as one `rope_parameters` object (no top-level `rope_theta`):
/// it must be read, not silently replaced by the 10000 default, and must agree with the
/// top-level fields when a file has both.
#[test]
fn config_parsing_reads_transformers_5_rope_parameters() {
    use cada::model::config::LlamaConfig;
    let mut v5 = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}
    });
    let c = LlamaConfig::from_json(&v5, "config.json").unwrap();
    assert_eq!(c.rope_theta, 1e6);
    assert!(c.rope_scaling.is_none());
    // the same with Llama-3 scaling inside rope_parameters equals the transformers-4 spelling
    v5["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    v5["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "llama3",
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let mut v4 = v5.clone();
    let rp = v4
        .as_object_mut()
        .unwrap()
        .remove("rope_parameters")
        .unwrap();
    v4["rope_theta"] = rp["rope_theta"].clone();
    v4["rope_scaling"] = rp.clone();
    let (a, b) = (
        LlamaConfig::from_json(&v5, "config.json").unwrap(),
        LlamaConfig::from_json(&v4, "config.json").unwrap(),
    );
    assert_eq!(a, b);
    match a.rope_scaling.as_ref().unwrap() {
        cada::model::config::RopeScaling::Llama3(rs) => assert_eq!(rs.factor, 32.0),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.rope_inv_freq(), b.rope_inv_freq());
    // both spellings in one file: equal is fine, different is an error naming both fields
    let mut both = v5.clone();
    both["rope_theta"] = serde_json::json!(500000.0);
    assert_eq!(LlamaConfig::from_json(&both, "config.json").unwrap(), a);
    both["rope_theta"] = serde_json::json!(10000.0);
    let e = LlamaConfig::from_json(&both, "m/config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m/config.json")
            && e.contains("rope_parameters.rope_theta")
            && e.contains("rope_theta"),
        "{e}"
    );
    let mut bad = v5.clone();
    bad["rope_parameters"]["rope_type"] = serde_json::json!("yarn");
    let e = LlamaConfig::from_json(&bad, "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rope_parameters.rope_type") && e.contains("yarn"),
        "{e}"
    );
    let mut per_layer = v5.clone();
    per_layer["rope_parameters"] = serde_json::json!({"full_attention": {"rope_theta": 1e6}});
    let e = LlamaConfig::from_json(&per_layer, "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rope_parameters") && e.contains("per-layer"),
        "{e}"
    );
}

/// A tensor the config does not account for (here an `o_proj` bias, as a Llama with
/// `attention_bias: true` or a converted checkpoint of another architecture would hold) is an
/// error naming the file and the tensor, never silently dropped; a tied head saved beside the
/// embedding is fine.
#[test]
fn tensors_the_config_does_not_use_are_refused() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model_dir(dir.path(), true, true);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rewrite = |extra: &[(&str, Vec<usize>)]| {
        let extra_data: Vec<Vec<u8>> = extra
            .iter()
            .map(|(_, shape)| vec![0u8; shape.iter().product::<usize>() * 4])
            .collect();
        let mut views: Vec<(String, TensorView)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                (
                    n,
                    TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
                )
            })
            .collect();
        for ((name, shape), data) in extra.iter().zip(&extra_data) {
            views.push((
                name.to_string(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            ));
        }
        std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
    };
    let d = cfg.hidden_size;
    rewrite(&[("model.layers.0.self_attn.o_proj.bias", vec![d])]);
    let e = cada::model::load::load_model(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("o_proj.bias") && e.contains("silently"),
        "{e}"
    );
    // tied head saved anyway: ignored
    rewrite(&[("lm_head.weight", vec![cfg.vocab_size, d])]);
    cada::model::load::load_model(dir.path()).unwrap();
}

/// Config fields the forward does not implement are errors naming the field, not ignored.
#[test]
fn config_features_the_forward_lacks_are_refused() {
    use cada::model::config::LlamaConfig;
    let base = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu"
    });
    LlamaConfig::from_json(&base, "config.json").unwrap();
    for (field, value, arch, needle) in [
        (
            "hidden_act",
            serde_json::json!("gelu"),
            "LlamaForCausalLM",
            "hidden_act",
        ),
        (
            "use_sliding_window",
            serde_json::json!(true),
            "Qwen2ForCausalLM",
            "use_sliding_window",
        ),
        (
            "partial_rotary_factor",
            serde_json::json!(0.75),
            "LlamaForCausalLM",
            "partial_rotary_factor",
        ),
        (
            "partial_rotary_factor",
            serde_json::json!(1.5),
            "Phi3ForCausalLM",
            "partial_rotary_factor",
        ),
        (
            "attention_bias",
            serde_json::json!(true),
            "Phi3ForCausalLM",
            "attention_bias",
        ),
        (
            "sliding_window",
            serde_json::json!(0),
            "MistralForCausalLM",
            "sliding_window",
        ),
        (
            "layer_types",
            serde_json::json!(["full_attention", "sliding_attention"]),
            "Qwen3ForCausalLM",
            "layer_types",
        ),
    ] {
        let mut c = base.clone();
        c["architectures"] = serde_json::json!([arch]);
        c[field] = value;
        let e = LlamaConfig::from_json(&c, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m/config.json") && e.contains(needle), "{e}");
    }
    // what the released configs say is accepted
    let mut q = base.clone();
    q["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    q["use_sliding_window"] = serde_json::json!(false);
    q["sliding_window"] = serde_json::json!(32768);
    LlamaConfig::from_json(&q, "config.json").unwrap();
    let mut m = base.clone();
    m["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    m["sliding_window"] = serde_json::Value::Null;
    LlamaConfig::from_json(&m, "config.json").unwrap();
    // a sliding window is accepted as a length limit (exact within it)
    let mut w = base.clone();
    w["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    w["sliding_window"] = serde_json::json!(4096);
    let windowed = LlamaConfig::from_json(&w, "config.json").unwrap();
    assert_eq!(windowed.sliding_window, Some(4096));
    assert_eq!(windowed.max_sequence_len(), 4096);
    // the up-front length checks name the window when it is the tighter limit
    w["max_position_embeddings"] = serde_json::json!(32768);
    let windowed = LlamaConfig::from_json(&w, "config.json").unwrap();
    assert_eq!(windowed.max_sequence_len(), 4096);
    assert_eq!(windowed.max_sequence_what(), "sliding window 4096");
    // a saved Mistral says its window, and says "none" too (transformers defaults to 4096)
    assert_eq!(windowed.to_hf_json()["sliding_window"], 4096);
    w["sliding_window"] = serde_json::Value::Null;
    let open = LlamaConfig::from_json(&w, "config.json").unwrap();
    let saved = open.to_hf_json();
    assert!(
        saved.get("sliding_window").is_some_and(|v| v.is_null()),
        "{saved}"
    );
    assert_eq!(open.max_sequence_len(), 32768);
    // transformers 5 keeps Phi-3's partial rotary inside rope_parameters
    let mut p = base.clone();
    p["architectures"] = serde_json::json!(["Phi3ForCausalLM"]);
    p["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5});
    let c = LlamaConfig::from_json(&p, "m/config.json").unwrap();
    assert_eq!(
        (c.partial_rotary_dim, c.rotary_dim()),
        (Some(c.head_dim / 2), c.head_dim / 2)
    );
    assert_eq!(c.rope_inv_freq().len(), c.head_dim / 4);
    // and it is written back so that transformers' int(head_dim · factor) gives it again
    let saved = c.to_hf_json();
    assert_eq!(saved["partial_rotary_factor"], 0.5);
    assert_eq!(LlamaConfig::from_json(&saved, "saved").unwrap(), c);
    let mut q3 = base.clone();
    q3["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
    q3["layer_types"] = serde_json::json!(["full_attention", "full_attention"]);
    q3["use_sliding_window"] = serde_json::json!(false);
    let c = LlamaConfig::from_json(&q3, "config.json").unwrap();
    assert!(
        c.qk_norm && !c.attention_bias,
        "Qwen3: q/k norms, no bias by default"
    );
}

/// Phi-3's checkpoint fuses q/k/v (`qkv_proj`) and gate/up (`gate_up_proj`): loading splits
/// them, saving joins them again to the same bytes, so a saved Phi-3 is the checkpoint
/// transformers wrote; and its sliding window limits sequences and KV caches.
#[test]
fn phi3_fused_projections_round_trip_and_its_window_limits_lengths() {
    use cada::backend::cpu::Cpu;
    use cada::model::config::LlamaConfig;
    use cada::model::llama::Llama;
    use cada::model::weights::{load_params, save_params_safetensors, SafetensorsDir};
    use safetensors::SafeTensors;
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_parity/phi3");
    let cfg = LlamaConfig::from_file(&fixture.join("config.json")).unwrap();
    assert_eq!(cfg.sliding_window, Some(64));
    // the config written back keeps what transformers would otherwise default: the window and
    // the pad token (Phi-3's default 32000 is out of this 97-token vocabulary)
    let back = cfg.to_hf_json();
    assert_eq!(back["sliding_window"], 64);
    assert_eq!(back["pad_token_id"], 0);
    assert_eq!(back["model_type"], "phi3");
    let params = load_params(&cfg, &SafetensorsDir::open(&fixture).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("model.safetensors");
    save_params_safetensors(&cfg, &params, &saved).unwrap();
    let (a, b) = (
        std::fs::read(fixture.join("model.safetensors")).unwrap(),
        std::fs::read(&saved).unwrap(),
    );
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names: Vec<String> = a.names().into_iter().cloned().collect();
    names.sort();
    let mut ours: Vec<String> = b.names().into_iter().cloned().collect();
    ours.sort();
    assert_eq!(names, ours);
    assert!(names
        .iter()
        .any(|n| n.ends_with("self_attn.qkv_proj.weight")));
    assert!(names.iter().any(|n| n.ends_with("mlp.gate_up_proj.weight")));
    for n in &names {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!(x.shape(), y.shape(), "{n}");
        assert!(x.data() == y.data(), "{n}: saved values differ");
    }
    // a fused tensor of the wrong shape is an error naming it
    let mut bad = cfg.clone();
    bad.intermediate_size += 1;
    let e = format!(
        "{:#}",
        load_params(&bad, &SafetensorsDir::open(&fixture).unwrap()).unwrap_err()
    );
    assert!(e.contains("gate_up_proj") && e.contains("shape"), "{e}");
    // sequences and caches longer than the window are refused, naming it
    let be = Cpu::new();
    let model = Llama::from_host(&be, cfg.clone(), &params).unwrap();
    let ids = vec![3u32; 65];
    let e = model.forward(&be, &ids, 1, 65).err().unwrap().to_string();
    assert!(e.contains("sliding window 64"), "{e}");
    model.forward(&be, &ids[..64], 1, 64).unwrap();
    let e = model.new_kv_cache(&be, 1, 65).err().unwrap().to_string();
    assert!(e.contains("sliding window 64"), "{e}");
}

/// Phi-3.5's LongRoPE: the short factors divide the inverse frequencies, the attention factor
/// follows transformers' default (sqrt(1 + ln(max/original) / ln(original))), the long factors
/// come with `original_max_position_embeddings` (the length beyond which a forward uses them),
/// sequences are limited by the positions alone, both spellings read the same, and a saved
/// config reads back equal.
#[test]
fn config_parsing_phi3_longrope() {
    use cada::model::config::{LlamaConfig, RopeScaling};
    let short: Vec<f64> = (0..8).map(|i| 1.0 + 0.25 * i as f64).collect();
    let long: Vec<f64> = (0..8).map(|i| 2.0 + 0.5 * i as f64).collect();
    let v4 = serde_json::json!({
        "architectures": ["Phi3ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": long}
    });
    let c = LlamaConfig::from_json(&v4, "config.json").unwrap();
    let Some(RopeScaling::LongRope(lr)) = &c.rope_scaling else {
        panic!("{:?}", c.rope_scaling)
    };
    let want = (1.0 + (32f64).ln() / (4096f64).ln()).sqrt();
    assert!((lr.attention_factor - want).abs() < 1e-12);
    assert_eq!(c.rope_scale(), want as f32);
    let inv = c.rope_inv_freq();
    for (i, f) in inv.iter().enumerate() {
        let expect = 1.0 / (short[i] * 10000f64.powf(2.0 * i as f64 / 16.0));
        assert!(
            (*f as f64 - expect).abs() <= 1e-7 * expect,
            "pair {i}: {f} vs {expect}"
        );
    }
    let (original, inv_long) = c.long_rope_inv_freq().expect("long factors");
    assert_eq!(original, 4096);
    for (i, f) in inv_long.iter().enumerate() {
        let expect = 1.0 / (long[i] * 10000f64.powf(2.0 * i as f64 / 16.0));
        assert!(
            (*f as f64 - expect).abs() <= 1e-7 * expect,
            "long pair {i}: {f} vs {expect}"
        );
    }
    assert_eq!(c.max_sequence_len(), 131072);
    assert_eq!(c.max_sequence_what(), "max_position_embeddings 131072");
    // transformers 5's spelling (and Phi-4-mini's partial rotary: 12 of 16 dims, 6 factors)
    let mut v5 = v4.clone();
    v5.as_object_mut().unwrap().remove("rope_scaling");
    v5["rope_parameters"] = serde_json::json!({"rope_type": "longrope", "rope_theta": 10000.0,
        "short_factor": short, "long_factor": long, "original_max_position_embeddings": 4096});
    assert_eq!(LlamaConfig::from_json(&v5, "config.json").unwrap(), c);
    let mut p4 = v5.clone();
    p4["rope_parameters"]["partial_rotary_factor"] = serde_json::json!(0.75);
    p4["rope_parameters"]["short_factor"] = serde_json::json!(short[..6]);
    p4["rope_parameters"]["long_factor"] = serde_json::json!(long[..6]);
    let c4 = LlamaConfig::from_json(&p4, "config.json").unwrap();
    assert_eq!((c4.rotary_dim(), c4.rope_inv_freq().len()), (12, 6));
    // saved configs read back equal (factors, the top-level original length, the rotary)
    for cfg in [&c, &c4] {
        let saved = cfg.to_hf_json();
        assert_eq!(
            &LlamaConfig::from_json(&saved, "saved").unwrap(),
            cfg,
            "{saved}"
        );
    }
    // an explicit attention_factor wins
    let mut given = v4.clone();
    given["rope_scaling"]["attention_factor"] = serde_json::json!(1.5);
    assert_eq!(
        LlamaConfig::from_json(&given, "c").unwrap().rope_scale(),
        1.5
    );
    // bad input: factors of the wrong length, a missing list, a non-positive factor, and
    // Phi-3's old names on another architecture
    let mut bad = v4.clone();
    bad["rope_scaling"]["short_factor"] = serde_json::json!(short[..7]);
    let e = format!(
        "{:#}",
        LlamaConfig::from_json(&bad, "m/config.json").unwrap_err()
    );
    assert!(
        e.contains("m/config.json") && e.contains("short_factor") && e.contains("8 numbers"),
        "{e}"
    );
    let mut bad = v4.clone();
    bad["rope_scaling"]
        .as_object_mut()
        .unwrap()
        .remove("long_factor");
    let e = format!(
        "{:#}",
        LlamaConfig::from_json(&bad, "m/config.json").unwrap_err()
    );
    assert!(e.contains("long_factor") && e.contains("missing"), "{e}");
    let mut bad = v4.clone();
    bad["rope_scaling"]["short_factor"][3] = serde_json::json!(0.0);
    let e = format!(
        "{:#}",
        LlamaConfig::from_json(&bad, "m/config.json").unwrap_err()
    );
    assert!(e.contains("short_factor") && e.contains("> 0"), "{e}");
    let mut bad = v4.clone();
    bad["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    bad["rope_scaling"]["type"] = serde_json::json!("su");
    let e = format!(
        "{:#}",
        LlamaConfig::from_json(&bad, "m/config.json").unwrap_err()
    );
    assert!(e.contains("\"su\" is not supported"), "{e}");
}
