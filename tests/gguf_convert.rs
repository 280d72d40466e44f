//! GGUF files converted to Hugging Face models (`cada::model::convert::gguf_to_hf`), written
//! here: each architecture's tensor names and metadata (Llama 3's RoPE divisors, Qwen3's q/k
//! norms, Phi-3's fused projections), and the tokenizer conversion's special-token and
//! SentencePiece rules.

mod common;

use cada::model::gguf::GgmlType;
use common::gguf_writer::{write, Writer};

/// Llama 3.1+ GGUFs carry their RoPE scaling as `rope_freqs.weight`, one divisor per frequency,
/// computed by llama.cpp's converter (its formula, written out here from the converter, not from
/// our config code). The conversion recovers Llama 3.2's rope_scaling (factor 32, low 1, high 4,
/// original 8192) and then gives exactly llama.cpp's frequencies, base / divisor; divisors no
/// Llama 3 scaling makes are refused, and all-ones divisors mean no scaling.
#[test]
fn llama3_rope_divisors_become_rope_scaling() {
    let (hd, theta) = (64usize, 500_000f64);
    let llama_cpp_divisors = |factor: f64, low: f64, high: f64, original: f64| -> Vec<f32> {
        let (low_wavelen, high_wavelen) = (original / low, original / high);
        (0..hd / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                (if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }) as f32
            })
            .collect()
    };
    let model = |divisors: &[f32]| {
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "llama");
        w.kv_u32("llama.embedding_length", hd as u32);
        w.kv_u32("llama.block_count", 0);
        w.kv_u32("llama.attention.head_count", 1);
        w.kv_u32("llama.feed_forward_length", 16);
        w.kv_f32("llama.rope.freq_base", theta as f32);
        w.kv_str("tokenizer.ggml.model", "gpt2");
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "c", "d"]);
        let emb: Vec<f32> = (0..4 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        w.tensor(
            "token_embd.weight",
            &[hd as u64, 4],
            GgmlType::F32,
            f32_bytes(&emb),
        );
        w.tensor(
            "output_norm.weight",
            &[hd as u64],
            GgmlType::F32,
            f32_bytes(&vec![1.0; hd]),
        );
        w.tensor(
            "rope_freqs.weight",
            &[(hd / 2) as u64],
            GgmlType::F32,
            f32_bytes(divisors),
        );
        w.bytes()
    };
    let divisors = llama_cpp_divisors(32.0, 1.0, 4.0, 8192.0);
    assert!(
        divisors.iter().any(|&d| d > 1.0 && d < 32.0),
        "the blend region is exercised"
    );
    let (_d, p) = write(&model(&divisors));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    let rs = &hf.config["rope_scaling"];
    assert_eq!(rs["rope_type"], "llama3", "{rs}");
    for (field, want) in [
        ("factor", 32.0),
        ("low_freq_factor", 1.0),
        ("high_freq_factor", 4.0),
        ("original_max_position_embeddings", 8192.0),
    ] {
        assert_eq!(rs[field].as_f64(), Some(want), "{field}: {rs}");
    }
    // the file has no layers; the rope settings are what is read here
    let mut config = hf.config.clone();
    config["num_hidden_layers"] = serde_json::json!(1);
    let cfg = cada::model::config::LlamaConfig::from_json(&config, "config.json").unwrap();
    let ours = cfg.rope_inv_freq();
    for (i, (&f, &d)) in ours.iter().zip(&divisors).enumerate() {
        let want = (1.0 / theta.powf((2 * i) as f64 / hd as f64)) / d as f64;
        assert!(
            ((f as f64) - want).abs() <= 1e-6 * want,
            "frequency {i}: ours {f}, llama.cpp {want}"
        );
    }
    // no scaling: all ones
    let (_d, p) = write(&model(&vec![1.0; hd / 2]));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    assert!(hf.config.get("rope_scaling").is_none(), "{}", hf.config);
    // divisors of no Llama 3 scaling: refused by name
    let mut odd = divisors.clone();
    odd[hd / 4] *= 1.5;
    let (_d, p) = write(&model(&odd));
    let e = format!("{:#}", cada::model::convert::gguf_to_hf(&p).err().unwrap());
    assert!(
        e.contains("t.gguf") && e.contains("rope_freqs.weight"),
        "{e}"
    );
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model` = llama) without its scores, or with a
/// score count that is not the token count, is refused naming the file and field.
#[test]
fn sentencepiece_vocabularies_without_matching_scores_are_refused() {
    let file = |scores: Option<&[f32]>| {
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "llama");
        w.kv_str("tokenizer.ggml.model", "llama");
        w.kv_strs("tokenizer.ggml.tokens", &["<unk>", "\u{2581}a", "b"]);
        if let Some(s) = scores {
            w.kv_f32s("tokenizer.ggml.scores", s);
        }
        w.bytes()
    };
    for (scores, needle) in [
        (None, "missing metadata `tokenizer.ggml.scores`"),
        (Some(&[0.0f32, -1.0][..]), "holds 2 values for 3 tokens"),
    ] {
        let (_d, p) = write(&file(scores));
        let e = format!(
            "{:#}",
            cada::model::gguf_tokenizer::gguf_tokenizer_json(&p)
                .err()
                .unwrap()
        );
        assert!(e.contains("t.gguf") && e.contains(needle), "{e}");
    }
    // with the scores it converts
    let (_d, p) = write(&file(Some(&[0.0, -1.0, -2.0])));
    cada::model::gguf_tokenizer::gguf_tokenizer_json(&p).unwrap();
}

/// `tokenizer.ggml.add_bos_token` / `add_eos_token`: with special tokens, BOS goes before and EOS
/// after the text exactly where the file says (llama.cpp's and Hugging Face's rule); without
/// special tokens neither is added.
#[test]
fn bos_and_eos_are_added_where_the_file_says() {
    for (add_bos, add_eos) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut w = Writer::new(3);
        w.kv_str("tokenizer.ggml.model", "gpt2");
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "<s>", "</s>"]);
        // normal, normal, control, control: the two specials are matched whole
        w.kv_u32s("tokenizer.ggml.token_type", &[1, 1, 3, 3]);
        w.kv_u32("tokenizer.ggml.bos_token_id", 2);
        w.kv_u32("tokenizer.ggml.eos_token_id", 3);
        w.kv_bool("tokenizer.ggml.add_bos_token", add_bos);
        w.kv_bool("tokenizer.ggml.add_eos_token", add_eos);
        let (_d, p) = write(&w.bytes());
        let json = cada::model::gguf_tokenizer::gguf_tokenizer_json(&p).unwrap();
        let tok = cada::model::tokenizer::Tokenizer::from_json_str(&json, "t.gguf").unwrap();
        let mut want = vec![];
        if add_bos {
            want.push(2);
        }
        want.extend([0, 1]);
        if add_eos {
            want.push(3);
        }
        let case = format!("add_bos {add_bos}, add_eos {add_eos}");
        assert_eq!(tok.encode("ab", true).unwrap(), want, "{case}");
        assert_eq!(tok.encode("ab", false).unwrap(), [0, 1], "{case}");
    }
}

/// A `qwen3` file: its per-head q/k norms map to `self_attn.{q,k}_norm.weight`, Q and K are not
/// un-permuted (llama.cpp's Qwen converters do not permute them), head_dim comes from
/// `attention.key_length` (wider than hidden / heads), and the result loads as a
/// `Qwen3ForCausalLM` with every tensor in place.
#[test]
fn qwen3_files_convert_with_their_qk_norms() {
    let (d, heads, kv_heads, hd, ff, vocab) = (8usize, 2usize, 1usize, 8usize, 12usize, 4usize);
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ramp = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let mut w = Writer::new(3);
    w.kv_str("general.architecture", "qwen3");
    w.kv_u32("qwen3.embedding_length", d as u32);
    w.kv_u32("qwen3.block_count", 1);
    w.kv_u32("qwen3.attention.head_count", heads as u32);
    w.kv_u32("qwen3.attention.head_count_kv", kv_heads as u32);
    w.kv_u32("qwen3.attention.key_length", hd as u32);
    w.kv_u32("qwen3.feed_forward_length", ff as u32);
    w.kv_f32("qwen3.rope.freq_base", 1e6);
    w.kv_f32("qwen3.attention.layer_norm_rms_epsilon", 1e-6);
    w.kv_str("tokenizer.ggml.model", "gpt2");
    w.kv_str("tokenizer.ggml.pre", "qwen2");
    w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "c", "d"]);
    // (GGUF name, GGUF dims: fastest first, values)
    let q = ramp(heads * hd * d, 0.31);
    let tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = vec![
        (
            "token_embd.weight",
            vec![d as u64, vocab as u64],
            ramp(vocab * d, 0.37),
        ),
        ("output_norm.weight", vec![d as u64], ramp(d, 0.5)),
        ("blk.0.attn_norm.weight", vec![d as u64], ramp(d, 0.7)),
        (
            "blk.0.attn_q.weight",
            vec![d as u64, (heads * hd) as u64],
            q.clone(),
        ),
        (
            "blk.0.attn_k.weight",
            vec![d as u64, (kv_heads * hd) as u64],
            ramp(kv_heads * hd * d, 0.23),
        ),
        (
            "blk.0.attn_v.weight",
            vec![d as u64, (kv_heads * hd) as u64],
            ramp(kv_heads * hd * d, 0.29),
        ),
        ("blk.0.attn_q_norm.weight", vec![hd as u64], ramp(hd, 0.11)),
        ("blk.0.attn_k_norm.weight", vec![hd as u64], ramp(hd, 0.13)),
        (
            "blk.0.attn_output.weight",
            vec![(heads * hd) as u64, d as u64],
            ramp(heads * hd * d, 0.17),
        ),
        ("blk.0.ffn_norm.weight", vec![d as u64], ramp(d, 0.19)),
        (
            "blk.0.ffn_gate.weight",
            vec![d as u64, ff as u64],
            ramp(ff * d, 0.41),
        ),
        (
            "blk.0.ffn_up.weight",
            vec![d as u64, ff as u64],
            ramp(ff * d, 0.43),
        ),
        (
            "blk.0.ffn_down.weight",
            vec![ff as u64, d as u64],
            ramp(ff * d, 0.47),
        ),
    ];
    for (name, dims, v) in &tensors {
        w.tensor(name, dims, GgmlType::F32, f32_bytes(v));
    }
    let (_d, p) = write(&w.bytes());
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    assert_eq!(
        hf.config["architectures"][0], "Qwen3ForCausalLM",
        "{}",
        hf.config
    );
    assert_eq!(hf.config["model_type"], "qwen3");
    assert_eq!(hf.config["head_dim"], hd);
    let get = |name: &str| {
        hf.tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    };
    let qn = get("model.layers.0.self_attn.q_norm.weight");
    assert_eq!((qn.1.clone(), qn.2.clone()), (vec![hd], ramp(hd, 0.11)));
    let kn = get("model.layers.0.self_attn.k_norm.weight");
    assert_eq!(kn.2, ramp(hd, 0.13));
    // Q as stored: [out, in] row-major is the GGUF data as is, no permutation undone
    let qp = get("model.layers.0.self_attn.q_proj.weight");
    assert_eq!((qp.1.clone(), qp.2.clone()), (vec![heads * hd, d], q));
    // and it is a model the loader accepts whole
    let cfg = cada::model::config::LlamaConfig::from_json(&hf.config, "config.json").unwrap();
    assert!(cfg.qk_norm && cfg.q_dim() == heads * hd && cfg.q_dim() != d);
    let spec = cada::model::weights::Params::spec(&cfg);
    let names: Vec<&str> = hf.tensors.iter().map(|t| t.0.as_str()).collect();
    for s in spec.tensors() {
        assert!(names.contains(&s.name.as_str()), "{} missing", s.name);
    }
    assert_eq!(names.len(), spec.tensors().len(), "{names:?}");
}

/// A `phi3` file: q/k/v (`attn_qkv`) and gate/up (`ffn_up`, 2 × feed_forward_length rows)
/// arrive fused, as Hugging Face's Phi-3 checkpoint holds them, and load split ([q; k; v],
/// [gate; up]); its sliding window becomes the config's; RoPE over part of a head becomes
/// `partial_rotary_factor`, and LongRoPE's factor tensors become `rope_scaling` (Phi-4-mini).
#[test]
fn phi3_files_convert_fused_and_load_split() {
    let (d, heads, kv_heads, ff, vocab) = (8usize, 2usize, 1usize, 12usize, 4usize);
    let hd = d / heads;
    let (qd, kvd) = (heads * hd, kv_heads * hd);
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ramp = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let (qkv, gate_up) = (ramp((qd + 2 * kvd) * d, 0.31), ramp(2 * ff * d, 0.41));
    let file = |rotary_dims: u32, longrope: bool| {
        let mut w = Writer::new(3);
        w.kv_str("general.architecture", "phi3");
        w.kv_u32("phi3.embedding_length", d as u32);
        w.kv_u32("phi3.block_count", 1);
        w.kv_u32("phi3.attention.head_count", heads as u32);
        w.kv_u32("phi3.attention.head_count_kv", kv_heads as u32);
        w.kv_u32("phi3.feed_forward_length", ff as u32);
        w.kv_u32("phi3.rope.dimension_count", rotary_dims);
        w.kv_u32("phi3.attention.sliding_window", 2047);
        w.kv_str("tokenizer.ggml.model", "gpt2");
        w.kv_strs("tokenizer.ggml.tokens", &["a", "b", "c", "d"]);
        if longrope {
            w.kv_u32("phi3.context_length", 8192);
            w.kv_u32("phi3.rope.scaling.original_context_length", 2048);
            // what llama.cpp writes: transformers' default attention factor, in f32
            let af = (1.0 + 4f64.ln() / 2048f64.ln()).sqrt() as f32;
            w.kv_f32("phi3.rope.scaling.attn_factor", af);
        }
        let mut tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = vec![
            (
                "token_embd.weight",
                vec![d as u64, vocab as u64],
                ramp(vocab * d, 0.37),
            ),
            (
                "output.weight",
                vec![d as u64, vocab as u64],
                ramp(vocab * d, 0.39),
            ),
            ("output_norm.weight", vec![d as u64], ramp(d, 0.5)),
            ("blk.0.attn_norm.weight", vec![d as u64], ramp(d, 0.7)),
            (
                "blk.0.attn_qkv.weight",
                vec![d as u64, (qd + 2 * kvd) as u64],
                qkv.clone(),
            ),
            (
                "blk.0.attn_output.weight",
                vec![qd as u64, d as u64],
                ramp(qd * d, 0.17),
            ),
            ("blk.0.ffn_norm.weight", vec![d as u64], ramp(d, 0.19)),
            (
                "blk.0.ffn_up.weight",
                vec![d as u64, (2 * ff) as u64],
                gate_up.clone(),
            ),
            (
                "blk.0.ffn_down.weight",
                vec![ff as u64, d as u64],
                ramp(ff * d, 0.47),
            ),
        ];
        if longrope {
            let pairs = rotary_dims as u64 / 2;
            tensors.push((
                "rope_factors_short.weight",
                vec![pairs],
                vec![1.5; pairs as usize],
            ));
            tensors.push((
                "rope_factors_long.weight",
                vec![pairs],
                vec![3.0; pairs as usize],
            ));
        }
        for (name, dims, v) in &tensors {
            w.tensor(name, dims, GgmlType::F32, f32_bytes(v));
        }
        w.bytes()
    };
    let (_d, p) = write(&file(hd as u32, false));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    assert_eq!(
        hf.config["architectures"][0], "Phi3ForCausalLM",
        "{}",
        hf.config
    );
    assert_eq!(hf.config["sliding_window"], 2047);
    let cfg = cada::model::config::LlamaConfig::from_json(&hf.config, "config.json").unwrap();
    assert_eq!(cfg.sliding_window, Some(2047));
    let src = cada::model::weights::InMemoryTensors {
        source: "t.gguf".into(),
        tensors: hf
            .tensors
            .into_iter()
            .map(|(n, s, v)| (n, (s, v)))
            .collect(),
    };
    let params = cada::model::weights::load_params(&cfg, &src).unwrap();
    let l = &params.layers[0];
    assert_eq!(l.q_proj, qkv[..qd * d]);
    assert_eq!(l.k_proj, qkv[qd * d..(qd + kvd) * d]);
    assert_eq!(l.v_proj, qkv[(qd + kvd) * d..]);
    assert_eq!(l.gate_proj, gate_up[..ff * d]);
    assert_eq!(l.up_proj, gate_up[ff * d..]);
    // RoPE over 2 of 4 dims of each head, with LongRoPE's factors
    let (_d, p) = write(&file(2, true));
    let hf = cada::model::convert::gguf_to_hf(&p).unwrap();
    let cfg = cada::model::config::LlamaConfig::from_json(&hf.config, "config.json").unwrap();
    assert_eq!((cfg.rotary_dim(), cfg.head_dim), (2, 4), "{}", hf.config);
    let Some(cada::model::config::RopeScaling::LongRope(lr)) = &cfg.rope_scaling else {
        panic!("{}", hf.config)
    };
    assert_eq!(
        (&lr.short_factor[..], &lr.long_factor[..]),
        (&[1.5][..], &[3.0][..])
    );
    assert_eq!(lr.original_max_position_embeddings, 2048);
    // the f32 attention factor was transformers' default: left to it, not written
    assert_eq!(lr.given_attention_factor, None, "{}", hf.config);
    assert!(hf
        .tensors
        .iter()
        .all(|(n, _, _)| !n.contains("rope_factors")));
    assert_eq!(cfg.max_sequence_len(), 2047); // the window (2047) is tighter than 2048
                                              // an odd or too wide rotary is refused
    for bad in [file(3, false), file(6, false)] {
        let (_d, p) = write(&bad);
        let e = format!("{:#}", cada::model::convert::gguf_to_hf(&p).err().unwrap());
        assert!(
            e.contains("t.gguf") && e.contains("rope.dimension_count"),
            "{e}"
        );
    }
}
