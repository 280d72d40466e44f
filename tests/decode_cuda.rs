//! The KV-cache decode path on the GPU against the CPU reference: a `Decoder`'s steps
//! recorded as CUDA graphs against launched op by op (and whole sampled generations), the
//! stacked q/k/v and gate/up projections against one GEMM per weight, and a bf16 KV cache
//! against the CPU's twin of it. The shared bodies are in common/model_twin.rs (the plain
//! f32 decode case, `cuda_whole_model_kv_cache_decode`, is here too). Without a GPU every test
//! prints "skipped: no GPU".

#[macro_use]
mod common;

use common::model_twin::*;
// what the GPU bodies use (without the `cuda` feature only the skip messages are compiled)
#[cfg(feature = "cuda")]
use {
    cada::backend::cpu::Cpu, cada::model::llama::Llama, common::check, rand::Rng,
    rand_chacha::ChaCha8Rng as Rand,
};

/// Recorded decode steps (CUDA graphs, `Backend::record`) against the same steps launched op
/// by op, on one handle with recording switched on and off: the same kernels on the same
/// values, but not required to be equal to the bit, since cuBLAS may pick another algorithm
/// inside a capture (whether they are is printed). Bounds: 1e-6 with f32 GEMMs; 1e-3 with
/// bf16 GEMMs, where a 1e-7 difference can flip one bf16 rounding of a later GEMM input
/// (~4e-3 a step) and so move a logit by ~1e-4. A replay that read a stale input (ids,
/// positions) or wrote the wrong cache row would be off by O(1). Both also against the CPU.
/// Then whole sampled generations (T 0.8, top-p 0.9, top-k 20), recorded and not: the graph
/// launch counter must move only in the first, and the tokens must be equal (compared when
/// the step logits were equal to the bit or the GEMMs are f32; otherwise a rounding-level
/// difference could move a sample across a boundary, and the test says it did not compare).
/// Once with f32 GEMMs, once with bf16 GEMMs, whose weight copies the prefill makes and the
/// recording then reads.
#[test]
fn cuda_decode_recorded_matches_launched() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        use cada::train::generate::{generate, SamplingConfig};
        let name = "cuda_decode_recorded_matches_launched";
        if let Some((mut gpu, mut rng)) = common::cuda_setup(name) {
            let cpu = Cpu::new();
            for (precision, tol, replay_tol) in [
                (GemmPrecision::F32, VALUE_TOL, 1e-6),
                (GemmPrecision::Bf16, BF16_MODEL_TOL, 1e-3),
            ] {
                gpu.set_gemm_precision(precision).unwrap();
                for cfg in configs() {
                    let params = common::random_params(&cfg, rng.gen());
                    let (prompts, steps) = decode_inputs(&mut rng, &cfg, 6);
                    gpu.set_graphs(true);
                    let (rec, recorded) =
                        decode_logits(&gpu, &cfg, &params, &prompts, &steps, true);
                    assert!(
                        recorded,
                        "{precision:?}: the decoder did not record (the capture was refused: \
                         see the warning above)"
                    );
                    gpu.set_graphs(false);
                    let (launched, again) =
                        decode_logits(&gpu, &cfg, &params, &prompts, &steps, true);
                    assert!(!again, "recording switched off, yet the decoder recorded");
                    let (c, _) = decode_logits(&cpu, &cfg, &params, &prompts, &steps, true);
                    for (i, ((r, l), c)) in rec.iter().zip(&launched).zip(&c).enumerate() {
                        check(
                            &format!("{precision:?} step {i}: recorded vs launched"),
                            r,
                            l,
                            replay_tol,
                        );
                        check(
                            &format!("{precision:?} step {i}: recorded vs CPU"),
                            r,
                            c,
                            tol,
                        );
                    }
                    let identical = rec == launched;
                    println!("  {precision:?}: recorded bit-identical to launched: {identical}");
                    let sampling = SamplingConfig {
                        temperature: 0.8,
                        top_p: 0.9,
                        top_k: 20,
                        max_new_tokens: 9,
                    };
                    let model = Llama::from_host(&gpu, cfg.clone(), &params).unwrap();
                    let seed: u64 = rng.gen();
                    let mut tokens = Vec::new();
                    for graphs in [true, false] {
                        gpu.set_graphs(graphs);
                        let launches = gpu.graph_launches();
                        let mut r = <Rand as rand::SeedableRng>::seed_from_u64(seed);
                        let g = generate(&gpu, &model, &prompts, &sampling, &[], &mut r, |_, _| {})
                            .unwrap();
                        let ran = gpu.graph_launches() - launches;
                        // 9 new tokens: prefill, 1 launched step, 1 recorded + 6 replayed
                        let want = if graphs { 7 } else { 0 };
                        assert_eq!(ran, want, "{precision:?} graphs {graphs}: graph launches");
                        tokens.push(g.tokens);
                    }
                    if identical || precision == GemmPrecision::F32 {
                        assert_eq!(
                            tokens[0], tokens[1],
                            "{precision:?}: recorded vs launched generation"
                        );
                    } else {
                        println!(
                            "  {precision:?}: generations NOT compared: the step logits differ \
                             in rounding (checked above within {replay_tol:.0e})"
                        );
                    }
                }
            }
            gpu.set_graphs(true);
            // every recording above (f32 and bf16 GEMMs, steps and generations) allocated no
            // graph memory: allocations refuse inside a capture, cuBLAS has its own workspace
            let graph_bytes = gpu.graph_memory_high_bytes().unwrap();
            println!("  graph memory high-water mark: {graph_bytes} bytes");
            assert_eq!(
                graph_bytes, 0,
                "a captured decode step allocated graph memory"
            );
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_decode_recorded_matches_launched: skipped: no GPU (built without the `cuda` feature)"
    );
}

/// The decoder's stacked projections (one GEMM for q/k/v, one for gate/up, over weight copies
/// stacked for the generation; in bf16 mode kept only as bf16) against one GEMM per weight, on
/// the GPU, with and without qkv biases, and with Qwen3's q/k norms (fused into the stacked
/// RoPE + cache write). The bf16 operands are the same roundings either way;
/// a wider GEMM may sum in another order, so: 1e-6 with f32 GEMMs, 1e-3 with bf16 GEMMs (the
/// bounds of `cuda_decode_recorded_matches_launched`, for the same reason). A wrong stacking
/// offset or row stride would be off by O(1). Also against the CPU.
#[test]
fn cuda_stacked_decode_matches_separate() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        let name = "cuda_stacked_decode_matches_separate";
        if let Some((mut gpu, mut rng)) = common::cuda_setup(name) {
            let cpu = Cpu::new();
            for (precision, tol, same_tol) in [
                (GemmPrecision::F32, VALUE_TOL, 1e-6),
                (GemmPrecision::Bf16, BF16_MODEL_TOL, 1e-3),
            ] {
                gpu.set_gemm_precision(precision).unwrap();
                for cfg in configs() {
                    let params = common::random_params(&cfg, rng.gen());
                    let (prompts, steps) = decode_inputs(&mut rng, &cfg, 5);
                    let (st, rec_st) = decode_logits(&gpu, &cfg, &params, &prompts, &steps, true);
                    let (sep, rec_sep) =
                        decode_logits(&gpu, &cfg, &params, &prompts, &steps, false);
                    assert!(rec_st && rec_sep, "{precision:?}: a decoder did not record");
                    let (c, _) = decode_logits(&cpu, &cfg, &params, &prompts, &steps, false);
                    for (i, ((a, b), c)) in st.iter().zip(&sep).zip(&c).enumerate() {
                        let at = format!("{precision:?} bias {} step {i}", cfg.attention_bias);
                        check(&format!("{at}: stacked vs separate"), a, b, same_tol);
                        check(&format!("{at}: stacked vs CPU"), a, c, tol);
                    }
                }
            }
            // bf16 with narrowing off: the stacked weights keep their f32 values beside the
            // bf16 copy the first step makes (outside the recording)
            gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
            gpu.set_narrow_saved_inputs(false);
            let cfg = &configs()[0];
            let params = common::random_params(cfg, rng.gen());
            let (prompts, steps) = decode_inputs(&mut rng, cfg, 4);
            let (st, recorded) = decode_logits(&gpu, cfg, &params, &prompts, &steps, true);
            assert!(
                recorded,
                "narrowing off: the stacked decoder did not record"
            );
            let (c, _) = decode_logits(&cpu, cfg, &params, &prompts, &steps, false);
            for (i, (a, c)) in st.iter().zip(&c).enumerate() {
                check(
                    &format!("bf16, narrowing off, step {i}: stacked vs CPU"),
                    a,
                    c,
                    BF16_MODEL_TOL,
                );
            }
            gpu.set_narrow_saved_inputs(true);
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_stacked_decode_matches_separate: skipped: no GPU (built without the `cuda` feature)"
    );
}

/// Whole generations' logits over a bf16 KV cache (`CADA_KV_CACHE=bf16`: the prefill's copy,
/// the fused RoPE + cache writes, stacked and separate, and the lane-per-key attention over
/// bf16 keys and values), f32 GEMMs, recorded, against the CPU's twin of that cache
/// (`Cpu::with_bf16_kv_cache`: the same RNE on every cache write). Not against the f32 cache:
/// these random tiny models amplify the cache's rounding to 0.4–1.9e-2 of the logits (CPU,
/// 6 seeds). With the same rounding the GPU's f32 reassociation (~1e-6) only matters where it
/// moves a value across a bf16 rounding boundary: a few elements in 10^4, each off by 2^-8,
/// so 1e-3. The model's caches must really be bf16 (narrowed) for this to mean anything.
#[test]
fn cuda_decode_with_bf16_kv_cache() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::KvCacheType;
        let name = "cuda_decode_with_bf16_kv_cache";
        if let Some((mut gpu, mut rng)) = common::cuda_setup(name) {
            let cpu = Cpu::with_bf16_kv_cache();
            gpu.set_kv_cache_type(KvCacheType::Bf16);
            for cfg in configs() {
                let params = common::random_params(&cfg, rng.gen());
                let (prompts, steps) = decode_inputs(&mut rng, &cfg, 5);
                let (c, _) = decode_logits(&cpu, &cfg, &params, &prompts, &steps, false);
                let model = Llama::from_host(&gpu, cfg.clone(), &params).unwrap();
                let cache = model.new_kv_cache(&gpu, 2, 8).unwrap();
                assert!(
                    cache.k.iter().chain(&cache.v).all(|b| b.is_narrowed()),
                    "CADA_KV_CACHE=bf16: the model's cache is not bf16"
                );
                for stacked in [true, false] {
                    let (g, recorded) =
                        decode_logits(&gpu, &cfg, &params, &prompts, &steps, stacked);
                    assert!(recorded, "bf16 KV cache, stacked {stacked}: did not record");
                    for (i, (a, c)) in g.iter().zip(&c).enumerate() {
                        let at = format!("bias {} stacked {stacked} step {i}", cfg.attention_bias);
                        check(&format!("{at}: bf16 KV cache vs the CPU twin"), a, c, 1e-3);
                    }
                }
            }
            gpu.set_kv_cache_type(KvCacheType::F32);
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_decode_with_bf16_kv_cache: skipped: no GPU (built without the `cuda` feature)");
}

/// The split-KV decode attention (`CADA_DECODE_ATTENTION=split_kv`) in whole recorded
/// generations, over an f32 cache against the CPU (f32 reassociation: 1e-5, as
/// `cuda_whole_model_kv_cache_decode`) and over a bf16 cache against the CPU's twin of it
/// (1e-3, as `cuda_decode_with_bf16_kv_cache`). A 256-position cache and prompts of 200, 5 and
/// 150 tokens: the plan splits the keys in two ranges of 128, so two sequences decode across
/// both and one within the first (a range past its length is skipped). Recorded from the
/// second step, so the partials the graph captured must outlive the capture (they move into
/// the recording); no graph memory allocated.
#[test]
fn cuda_decode_split_kv_attention() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{split_kv_plan, DecodeAttentionKernel, KvCacheType};
        use cada::backend::{Backend, DecodeShape};
        let name = "cuda_decode_split_kv_attention";
        if let Some((mut gpu, mut rng)) = common::cuda_setup(name) {
            gpu.set_decode_attention_kernel(DecodeAttentionKernel::SplitKv);
            assert!(
                gpu.name().contains("split_kv decode attention"),
                "{}",
                gpu.name()
            );
            for (kind, cpu, tol) in [
                (KvCacheType::F32, Cpu::new(), VALUE_TOL),
                (KvCacheType::Bf16, Cpu::with_bf16_kv_cache(), 1e-3),
            ] {
                gpu.set_kv_cache_type(kind);
                for cfg in configs() {
                    let plan = split_kv_plan(
                        DecodeShape {
                            batch: 3,
                            capacity: 256,
                            n_heads: cfg.num_attention_heads,
                            n_kv_heads: cfg.num_key_value_heads,
                            head_dim: cfg.head_dim,
                        },
                        gpu.sm_count(),
                    );
                    assert_eq!(plan.splits, 2, "{plan:?}: the keys in two ranges");
                    let params = common::random_params(&cfg, rng.gen());
                    let v = cfg.vocab_size as u32;
                    let prompts: Vec<Vec<u32>> = [200usize, 5, 150]
                        .iter()
                        .map(|&n| (0..n).map(|_| rng.gen_range(0..v)).collect())
                        .collect();
                    let steps: Vec<Vec<u32>> = (0..6)
                        .map(|_| (0..3).map(|_| rng.gen_range(0..v)).collect())
                        .collect();
                    let (c, _) = decode_logits_in(&cpu, &cfg, &params, &prompts, &steps, true, 256);
                    let (g, recorded) =
                        decode_logits_in(&gpu, &cfg, &params, &prompts, &steps, true, 256);
                    assert!(recorded, "{kind:?}: the split-KV decoder did not record");
                    for (i, (a, c)) in g.iter().zip(&c).enumerate() {
                        check(&format!("{kind:?} cache, split-KV, step {i}"), a, c, tol);
                    }
                }
            }
            gpu.set_kv_cache_type(KvCacheType::F32);
            gpu.set_decode_attention_kernel(DecodeAttentionKernel::LanePerKey);
            let graph_bytes = gpu.graph_memory_high_bytes().unwrap();
            assert_eq!(
                graph_bytes, 0,
                "a captured split-KV step allocated graph memory"
            );
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_decode_split_kv_attention: skipped: no GPU (built without the `cuda` feature)");
}

gpu_test!(cuda_whole_model_kv_cache_decode, decode_case);
