//! Whole-model checks on the CPU reference: KV-cache decoding (per step and through the
//! recordable `Decoder`) equals the full forward, the
//! whole model's backward equals finite differences, and a model directory written here loads.
#![allow(clippy::needless_range_loop)] // index loops mirror the formulas being checked

mod common;

use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use cada::model::llama::{shifted_targets, Decoder, Llama};
use common::*;

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!(a.iter().all(|x| x.is_finite()), "NaN/Inf in output");
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    for (bias, tied) in [(false, true), (true, false)] {
        let be = Cpu::new();
        let cfg = tiny_cfg(61, bias, tied);
        let model = Llama::from_host(&be, cfg.clone(), &random_params(&cfg, 1)).unwrap();
        // Three sequences of different prompt lengths, each continued by 4 forced tokens.
        let prompts: Vec<Vec<u32>> =
            vec![vec![3, 5, 7, 11, 13], vec![17, 19], vec![23, 29, 31, 37]];
        let cont: Vec<Vec<u32>> =
            vec![vec![41, 43, 47, 53], vec![59, 2, 4, 6], vec![8, 10, 12, 14]];
        // Through `decode_step` (buffers allocated per step) and through `Decoder`s (buffers
        // reused every step, the recordable path), with separate and with stacked projection
        // weights: the same ops on the same values (a stacked GEMM's element is the same dot
        // product, the stacked RoPE/SwiGLU the same arithmetic), so equal to the bit.
        let mut cache = model.new_kv_cache(&be, 3, 16).unwrap();
        let mut decoders = [false, true]
            .map(|stacked| Decoder::with_stacking(&be, &model, 3, 16, stacked).unwrap());
        let mut step_logits = vec![be
            .download(&model.prefill(&be, &mut cache, &prompts).unwrap())
            .unwrap()];
        for decoder in &mut decoders {
            let prefilled = be.download(&decoder.prefill(&prompts).unwrap()).unwrap();
            assert_eq!(
                prefilled, step_logits[0],
                "bias={bias} tied={tied}: prefill"
            );
        }
        for s in 0..4 {
            let toks: Vec<u32> = cont.iter().map(|c| c[s]).collect();
            let pos: Vec<u32> = prompts.iter().map(|p| (p.len() + s) as u32).collect();
            step_logits.push(
                be.download(&model.decode_step(&be, &mut cache, &toks, &pos).unwrap())
                    .unwrap(),
            );
            for (stacked, decoder) in decoders.iter_mut().enumerate() {
                let reused = be.download(decoder.step(&toks, &pos).unwrap()).unwrap();
                assert_eq!(
                    reused,
                    step_logits[s + 1],
                    "bias={bias} tied={tied} stacked={stacked} step {s}"
                );
            }
        }
        assert!(
            decoders.iter().all(|d| !d.is_recorded()),
            "the CPU records nothing"
        );
        let v = cfg.vocab_size;
        for (b, (p, c)) in prompts.iter().zip(&cont).enumerate() {
            let full: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
            let fwd = model.forward(&be, &full, 1, full.len()).unwrap();
            for s in 0..=4 {
                let row = p.len() - 1 + s;
                let want = be
                    .download(&model.logits_rows(&be, &fwd.hidden, &[row]).unwrap())
                    .unwrap();
                let got = &step_logits[s][b * v..(b + 1) * v];
                let e = rel_err(got, &want);
                // f32, same ops in a different grouping: 1e-5 relative
                assert!(
                    e < 1e-5,
                    "bias={bias} tied={tied} seq {b} step {s}: rel err {e}"
                );
            }
        }
    }
}

/// The inference forward (nothing saved, one layer's buffers reused) against the training
/// forward: the same ops on the same values, so the same hidden states to the bit; and the
/// no-grad completion log-probs equal the saving ones, whose backward they refuse to give.
#[test]
fn inference_forward_equals_the_saving_forward() {
    use cada::cada::seqlogp::{seq_backward, seq_logprobs, seq_logprobs_no_grad, Seq};
    for (bias, tied) in [(false, true), (true, false)] {
        let be = Cpu::new();
        let cfg = tiny_cfg(61, bias, tied);
        let model = Llama::from_host(&be, cfg.clone(), &random_params(&cfg, 5)).unwrap();
        let (batch, seq) = (3, 11);
        let ids: Vec<u32> = (0..batch * seq)
            .map(|i| ((i * 7 + 3) % 61) as u32)
            .collect();
        let fwd = model.forward(&be, &ids, batch, seq).unwrap();
        let mut layers_seen = 0;
        let hidden = model
            .forward_inference(&be, &ids, batch, seq, |l, k, v| {
                assert_eq!(l, layers_seen);
                assert_eq!(
                    (k.len(), v.len()),
                    (batch * seq * cfg.kv_dim(), batch * seq * cfg.kv_dim())
                );
                layers_seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(layers_seen, cfg.num_hidden_layers);
        assert_eq!(hidden, fwd.hidden, "bias={bias} tied={tied}: hidden states");
        let seqs = vec![
            Seq {
                ctx: vec![3, 5, 7],
                completion: vec![11, 13, 17, 19],
            },
            Seq {
                ctx: vec![23],
                completion: vec![29, 31],
            },
        ];
        let with = seq_logprobs(&be, &model, &seqs, 0.7).unwrap();
        let without = seq_logprobs_no_grad(&be, &model, &seqs, 0.7).unwrap();
        assert_eq!(
            with.logp, without.logp,
            "bias={bias} tied={tied}: log-probs"
        );
        assert_eq!(
            with.entropy, without.entropy,
            "bias={bias} tied={tied}: entropies"
        );
        let mut grads = model.zeros_like_params(&be).unwrap();
        let dlogp = vec![1.0; seqs.len() * without.lc];
        let e = seq_backward(&be, &model, &without, &seqs, &dlogp, 0.7, &mut grads).unwrap_err();
        assert!(format!("{e:#}").contains("without saving"), "{e:#}");
        seq_backward(&be, &model, &with, &seqs, &dlogp, 0.7, &mut grads).unwrap();
    }
}

/// A rollout batch repeats each prompt G times; the prefill runs each distinct prompt once and
/// copies its keys/values into every slot holding it. Against the prefill of the distinct
/// prompts alone (the same forward): the same logits rows and cache rows, to the bit.
#[test]
fn prefill_runs_repeated_prompts_once() {
    let be = Cpu::new();
    let cfg = tiny_cfg(61, true, false);
    let model = Llama::from_host(&be, cfg.clone(), &random_params(&cfg, 9)).unwrap();
    let (a, b, c) = (vec![3u32, 5, 7, 11], vec![13u32, 17], vec![19u32, 23, 29]);
    let repeated = vec![
        a.clone(),
        b.clone(),
        a.clone(),
        c.clone(),
        b.clone(),
        a.clone(),
    ];
    let source = [0usize, 1, 0, 2, 1, 0];
    let distinct = vec![a, b, c];
    let mut cache = model.new_kv_cache(&be, repeated.len(), 8).unwrap();
    let got = be
        .download(&model.prefill(&be, &mut cache, &repeated).unwrap())
        .unwrap();
    let mut ref_cache = model.new_kv_cache(&be, distinct.len(), 8).unwrap();
    let want = be
        .download(&model.prefill(&be, &mut ref_cache, &distinct).unwrap())
        .unwrap();
    let (v, kvd) = (cfg.vocab_size, cfg.kv_dim());
    for (slot, &u) in source.iter().enumerate() {
        assert_eq!(
            got[slot * v..(slot + 1) * v],
            want[u * v..(u + 1) * v],
            "logits of slot {slot}"
        );
        let len = distinct[u].len() * kvd;
        for l in 0..cfg.num_hidden_layers {
            for (c, r) in [
                (&cache.k[l], &ref_cache.k[l]),
                (&cache.v[l], &ref_cache.v[l]),
            ] {
                assert_eq!(
                    c[slot * 8 * kvd..][..len],
                    r[u * 8 * kvd..][..len],
                    "layer {l} slot {slot}"
                );
            }
        }
    }
}

/// Σ_t w_t · logp_t over a batch, for the finite-difference check.
fn weighted_logp(
    be: &Cpu,
    model: &Llama<Cpu>,
    ids: &[u32],
    batch: usize,
    seq: usize,
    w: &[f32],
    temp: f32,
) -> f64 {
    let fwd = model.forward(be, ids, batch, seq).unwrap();
    let targets = be.upload_ids(&shifted_targets(ids, batch, seq)).unwrap();
    let (lp, _, _) = model.token_logprobs(be, &fwd, &targets, temp).unwrap();
    lp.iter()
        .zip(w)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum()
}

#[test]
fn whole_model_backward_matches_finite_differences() {
    for (bias, tied) in [(true, false), (false, true)] {
        let be = Cpu::new();
        let mut cfg = tiny_cfg(23, bias, tied);
        cfg.hidden_size = 16;
        cfg.head_dim = 4;
        cfg.intermediate_size = 24;
        let host = random_params(&cfg, 3);
        let (batch, seq) = (2, 5);
        let ids: Vec<u32> = vec![1, 4, 9, 16, 2, 5, 8, 13, 21, 3];
        let w: Vec<f32> = (0..batch * seq)
            .map(|i| {
                if i % seq == seq - 1 {
                    0.0
                } else {
                    0.3 + 0.1 * (i % 4) as f32
                }
            })
            .collect();
        let temp = 0.8;
        let model = Llama::from_host(&be, cfg.clone(), &host).unwrap();
        let fwd = model.forward(&be, &ids, batch, seq).unwrap();
        let targets = be.upload_ids(&shifted_targets(&ids, batch, seq)).unwrap();
        let (_, _, lse) = model.token_logprobs(&be, &fwd, &targets, temp).unwrap();
        let mut grads = model.zeros_like_params(&be).unwrap();
        model
            .logprob_backward(&be, &fwd, &targets, &lse, &w, temp, &mut grads)
            .unwrap();
        let names: Vec<String> = cada::model::weights::Params::spec(&cfg)
            .tensors()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let analytic: Vec<Vec<f32>> = grads.tensors().iter().map(|g| g.to_vec()).collect();
        let eps = 1e-2f32;
        for (ti, name) in names.iter().enumerate() {
            let len = analytic[ti].len();
            let picks: Vec<usize> = (0..len).step_by((len / 6).max(1)).take(6).collect();
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for &i in &picks {
                let mut plus = host.clone();
                plus.tensors_mut()[ti][i] += eps;
                let mut minus = host.clone();
                minus.tensors_mut()[ti][i] -= eps;
                let lp = weighted_logp(
                    &be,
                    &Llama::from_host(&be, cfg.clone(), &plus).unwrap(),
                    &ids,
                    batch,
                    seq,
                    &w,
                    temp,
                );
                let lm = weighted_logp(
                    &be,
                    &Llama::from_host(&be, cfg.clone(), &minus).unwrap(),
                    &ids,
                    batch,
                    seq,
                    &w,
                    temp,
                );
                let fd = (lp - lm) / (2.0 * eps as f64);
                num += (fd - analytic[ti][i] as f64).powi(2);
                den += fd.powi(2);
            }
            let rel = (num / den.max(1e-12)).sqrt();
            // f32 forward with eps 1e-2: truncation O(eps²) plus rounding O(1e-7/eps) → 3e-2
            // relative over the sampled entries (or absolute 1e-4 when the gradient is ~0).
            assert!(
                rel < 3e-2 || num.sqrt() < 1e-4,
                "bias={bias} tied={tied} `{name}`: rel err {rel:.3e}"
            );
        }
    }
}

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
    assert_eq!(a.rope_scaling.as_ref().unwrap().factor, 32.0);
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
            "sliding_window",
            serde_json::json!(4096),
            "MistralForCausalLM",
            "sliding_window",
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
}

/// Bad inputs to the decoder and `write_ids` are errors naming the problem, not panics.
#[test]
fn decoder_refuses_bad_steps() {
    let be = Cpu::new();
    let cfg = tiny_cfg(61, false, true);
    let model = Llama::from_host(&be, cfg.clone(), &random_params(&cfg, 2)).unwrap();
    let mut decoder = Decoder::new(&be, &model, 2, 8).unwrap();
    decoder.prefill(&[vec![3, 5], vec![7]]).unwrap();
    let err = |r: anyhow::Result<&Vec<f32>>| format!("{:#}", r.expect_err("accepted"));
    let e = err(decoder.step(&[1], &[2]));
    assert!(e.contains("1 tokens for 2 slots"), "{e}");
    let e = err(decoder.step(&[1, 2], &[2, 8]));
    assert!(e.contains("beyond the cache capacity 8"), "{e}");
    let e = err(decoder.step(&[1, 99], &[2, 1]));
    assert!(e.contains("token id 99"), "{e}");
    let mut ids = be.upload_ids(&[0, 0, 0]).unwrap();
    let e = format!("{:#}", be.write_ids(&mut ids, &[1, 2]).unwrap_err());
    assert!(e.contains("2 ids into a buffer of 3"), "{e}");
    // and it still decodes after the refusals
    decoder.step(&[1, 2], &[2, 1]).unwrap();
}

/// Stacked projections at a batch past the CPU's dot-product path (sgemm, blocked): still the
/// same logits to the bit as one GEMM per weight, so the rollouts' samples do not change.
#[test]
fn stacked_decoder_equals_separate_at_gemm_batches() {
    let be = Cpu::new();
    let cfg = tiny_cfg(61, true, false);
    let model = Llama::from_host(&be, cfg.clone(), &random_params(&cfg, 3)).unwrap();
    let slots = 40;
    let prompts: Vec<Vec<u32>> = (0..slots)
        .map(|b| {
            (0..1 + b % 5)
                .map(|i| ((b * 7 + i * 3) % 61) as u32)
                .collect()
        })
        .collect();
    let mut logits = Vec::new();
    for stacked in [false, true] {
        let mut decoder = Decoder::with_stacking(&be, &model, slots, 12, stacked).unwrap();
        let mut got = vec![be.download(&decoder.prefill(&prompts).unwrap()).unwrap()];
        for s in 0..3 {
            let toks: Vec<u32> = (0..slots).map(|b| ((b * 11 + s) % 61) as u32).collect();
            let pos: Vec<u32> = prompts.iter().map(|p| (p.len() + s) as u32).collect();
            got.push(be.download(decoder.step(&toks, &pos).unwrap()).unwrap());
        }
        logits.push(got);
    }
    assert!(logits[0].iter().flatten().all(|x| x.is_finite()));
    assert_eq!(logits[0], logits[1], "stacked vs separate projections");
}

/// The stacked decode ops refuse buffers of the wrong length by name (the trait defaults, which
/// the CPU runs and every backend's twin is tested against).
#[test]
fn stacked_decode_ops_refuse_wrong_lengths() {
    use cada::backend::DecodeShape;
    let be = Cpu::new();
    let (rows, f) = (3, 5);
    let mut out = vec![0.0; rows * f];
    let e = be
        .swiglu_forward_stacked(&mut out, &vec![0.0; rows * 2 * f - 1], rows, f)
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("swiglu_forward_stacked: gate_up holds 29"),
        "{e:#}"
    );
    let mut short = vec![0.0; rows * f - 1];
    assert!(be
        .swiglu_forward_stacked(&mut short, &vec![0.0; rows * 2 * f], rows, f)
        .is_err());
    let s = DecodeShape {
        batch: 2,
        capacity: 4,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
    };
    let (mut q, qkv) = (vec![0.0; 2 * 8], vec![0.0; 2 * 16 - 1]);
    let (mut kc, mut vc) = (vec![0.0; 2 * 4 * 4], vec![0.0; 2 * 4 * 4]);
    let e = be
        .decode_rope_cache_write_stacked(
            &mut q,
            &qkv,
            &mut kc,
            &mut vc,
            &vec![0, 1],
            &vec![1.0; 2],
            s,
        )
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("decode_rope_cache_write_stacked: qkv holds 31"),
        "{e:#}"
    );
}
