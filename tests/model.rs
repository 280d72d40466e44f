//! Whole-model checks on the CPU reference: KV-cache decoding (per step and through the
//! recordable `Decoder`, stacked or not) equals the full forward, the inference forward and the
//! prefill equal the saving forward, and the whole model's backward equals finite differences.
//! Loading model directories: tests/model_files.rs.
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
    for (bias, tied, qk) in [
        (false, true, false),
        (true, false, false),
        (false, true, true),
    ] {
        let be = Cpu::new();
        let cfg = with_qk_norm(tiny_cfg(61, bias, tied), qk, 12);
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
                "bias={bias} tied={tied} qk_norm={qk}: prefill"
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
                    "bias={bias} tied={tied} qk_norm={qk} stacked={stacked} step {s}"
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
                    "bias={bias} tied={tied} qk_norm={qk} seq {b} step {s}: rel err {e}"
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
    for (bias, tied, qk) in [
        (false, true, false),
        (true, false, false),
        (false, true, true),
    ] {
        let be = Cpu::new();
        let cfg = with_qk_norm(tiny_cfg(61, bias, tied), qk, 12);
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
        assert_eq!(
            hidden, fwd.hidden,
            "bias={bias} tied={tied} qk_norm={qk}: hidden states"
        );
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
            "bias={bias} tied={tied} qk_norm={qk}: log-probs"
        );
        assert_eq!(
            with.entropy, without.entropy,
            "bias={bias} tied={tied} qk_norm={qk}: entropies"
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
    for (bias, tied, qk) in [
        (true, false, false),
        (false, true, false),
        (true, false, true),
    ] {
        let be = Cpu::new();
        let mut cfg = tiny_cfg(23, bias, tied);
        cfg.hidden_size = 16;
        cfg.head_dim = 4;
        // Qwen3: q/k norms (with a bias too, which Qwen3 lacks, to exercise both together)
        let mut cfg = with_qk_norm(cfg, qk, 6);
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
                "bias={bias} tied={tied} qk_norm={qk} `{name}`: rel err {rel:.3e}"
            );
        }
    }
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
            &cada::backend::Rope::whole_head(vec![1.0; 2], 4),
            s,
        )
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("decode_rope_cache_write_stacked: qkv holds 31"),
        "{e:#}"
    );
    // Qwen3's: a norm weight that is not [head_dim]
    let qkv = vec![0.0; 2 * 16];
    let e = be
        .decode_qk_norm_rope_cache_write_stacked(
            &mut q,
            &qkv,
            &mut kc,
            &mut vc,
            &vec![0, 1],
            &cada::backend::Rope::whole_head(vec![1.0; 2], 4),
            &vec![1.0; 4],
            &vec![1.0; 3],
            1e-6,
            s,
        )
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("k_norm 3, for head_dim 4"),
        "{e:#}"
    );
}

/// The CPU twin of CUDA's bf16 KV cache (`Cpu::with_bf16_kv_cache`): after the prefill and
/// every step each cache value is a bf16 value; `decode_step` and both `Decoder`s (separate and
/// stacked projections) give the same logits to the bit; and the logits move off the f32
/// cache's by the rounding alone: not equal, within 5e-2 (random tiny models amplify the
/// cache's 2^-9 rounding to ~0.4–1.9e-2 of the logits, measured over 6 seeds × 2 configs).
#[test]
fn bf16_kv_cache_twin_rounds_every_cache_write() {
    let (be, be16) = (Cpu::new(), Cpu::with_bf16_kv_cache());
    let cfg = tiny_cfg(61, true, false);
    let params = random_params(&cfg, 3);
    let (model, model16) = (
        Llama::from_host(&be, cfg.clone(), &params).unwrap(),
        Llama::from_host(&be16, cfg.clone(), &params).unwrap(),
    );
    let prompts: Vec<Vec<u32>> = vec![vec![3, 5, 7, 11, 13], vec![17, 19], vec![23, 29, 31, 37]];
    let is_bf16 = |c: &cada::model::llama::KvCache<Cpu>| {
        c.k.iter()
            .chain(&c.v)
            .flatten()
            .all(|&x| half::bf16::from_f32(x).to_f32() == x)
    };
    let (mut cache, mut cache16) = (
        model.new_kv_cache(&be, 3, 16).unwrap(),
        model16.new_kv_cache(&be16, 3, 16).unwrap(),
    );
    let mut decoders = [false, true]
        .map(|stacked| Decoder::with_stacking(&be16, &model16, 3, 16, stacked).unwrap());
    let exact = model.prefill(&be, &mut cache, &prompts).unwrap();
    let rounded = model16.prefill(&be16, &mut cache16, &prompts).unwrap();
    for d in &mut decoders {
        assert_eq!(d.prefill(&prompts).unwrap(), rounded, "Decoder prefill");
    }
    assert!(
        is_bf16(&cache16) && !is_bf16(&cache),
        "the prefill's cache values"
    );
    // the prefill's own logits come from its forward, before any cache read
    assert_eq!(exact, rounded, "the prefill reads no cache");
    let mut worst = 0.0f64;
    for s in 0..4u32 {
        let toks: Vec<u32> = (0..3).map(|b| 40 + 3 * s + b).collect();
        let pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32 + s).collect();
        let exact = model.decode_step(&be, &mut cache, &toks, &pos).unwrap();
        let rounded = model16
            .decode_step(&be16, &mut cache16, &toks, &pos)
            .unwrap();
        for (stacked, d) in decoders.iter_mut().enumerate() {
            assert_eq!(
                *d.step(&toks, &pos).unwrap(),
                rounded,
                "step {s} stacked {stacked}"
            );
            assert!(is_bf16(d.cache()), "step {s}: the Decoder's cache values");
        }
        assert!(is_bf16(&cache16), "step {s}: the cache values");
        assert_ne!(exact, rounded, "step {s}: the rounding changed nothing");
        worst = worst.max(rel_err(&rounded, &exact));
    }
    println!("bf16 KV cache twin: logits within {worst:.2e} of the f32 cache's");
    assert!(
        worst <= 5e-2,
        "bf16 cache twin: {worst:.3e} from the f32 cache"
    );
}
