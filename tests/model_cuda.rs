//! The whole model on the GPU against the CPU reference: per-token log-probs, entropies and
//! every parameter gradient of forward + fused head + backward, and the KV-cache path
//! (prefill, then decode steps of sequences at different lengths). Fresh random weights and
//! tokens every run (the seed is printed); odd lengths that are not tile multiples.
//!
//! Bounds, as in ops_cuda.rs: f32 kernels and f32 GEMMs only reorder sums, so values get 1e-5;
//! gradients, which go through cancellations (softmax, RMSNorm backward) and the embedding's
//! atomics, get 1e-4. Without a GPU every test prints "skipped: no GPU".

#[macro_use]
mod common;

use common::check;

use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use cada::model::config::LlamaConfig;
use cada::model::llama::{shifted_targets, Decoder, Llama};
use cada::model::weights::Params;
use rand::Rng;
use rand_chacha::ChaCha8Rng as Rand;

/// prompts and the tokens of each decode step
type DecodeInputs = (Vec<Vec<u32>>, Vec<Vec<u32>>);

/// values (log-probs, logits): f32 reassociation
const VALUE_TOL: f64 = 1e-5;
/// gradients and entropies: cancellation-prone
const GRAD_TOL: f64 = 1e-4;

/// Log-probs, entropies and all gradients of `Σ dlogp · logp` on one backend.
struct Pass {
    logp: Vec<f32>,
    entropy: Vec<f32>,
    grads: Vec<Vec<f32>>,
}

fn run_pass<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    ids: &[u32],
    (batch, seq): (usize, usize),
    dlogp: &[f32],
    temperature: f32,
) -> Pass {
    let model = Llama::from_host(be, cfg.clone(), params).unwrap();
    let targets = be.upload_ids(&shifted_targets(ids, batch, seq)).unwrap();
    let fwd = model.forward(be, ids, batch, seq).unwrap();
    let (lp, ent, lse) = model
        .token_logprobs(be, &fwd, &targets, temperature)
        .unwrap();
    let mut grads = model.zeros_like_params(be).unwrap();
    let d = be.upload(dlogp).unwrap();
    model
        .logprob_backward(be, &fwd, &targets, &lse, &d, temperature, &mut grads)
        .unwrap();
    Pass {
        logp: be.download(&lp).unwrap(),
        entropy: be.download(&ent).unwrap(),
        grads: grads
            .tensors()
            .iter()
            .map(|g| be.download(g).unwrap())
            .collect(),
    }
}

/// `n` random token ids of `cfg`'s vocabulary and `n` upstream log-prob gradients in ±1.
fn random_tokens(r: &mut Rand, cfg: &LlamaConfig, n: usize) -> (Vec<u32>, Vec<f32>) {
    let ids = (0..n)
        .map(|_| r.gen_range(0..cfg.vocab_size as u32))
        .collect();
    let dlogp = (0..n).map(|_| r.gen::<f32>() * 2.0 - 1.0).collect();
    (ids, dlogp)
}

/// Two architectures: the tiny GQA model of the CPU tests (head_dim 8, qkv bias, untied head)
/// and a tied one at head_dim 64 (the SmolLM2/Qwen2.5 head width).
fn configs() -> Vec<LlamaConfig> {
    let a = common::tiny_cfg(97, true, false);
    let mut b = cada::model::init::tiny_config(301, 128, 2, 2, 1, 96, 256);
    b.tie_word_embeddings = true;
    vec![a, b]
}

fn whole_model_case<B: Backend>(gpu: &B, r: &mut Rand) {
    whole_model_case_within(gpu, r, VALUE_TOL, GRAD_TOL);
}

/// `whole_model_case` with the bounds for log-probs (`value`) and entropies and gradients.
fn whole_model_case_within<B: Backend>(gpu: &B, r: &mut Rand, value: f64, grad: f64) {
    let cpu = Cpu::new();
    for cfg in configs() {
        let params = common::random_params(&cfg, r.gen());
        let (batch, seq) = (3, 37);
        let (ids, dlogp) = random_tokens(r, &cfg, batch * seq);
        let t = 0.7;
        let g = run_pass(gpu, &cfg, &params, &ids, (batch, seq), &dlogp, t);
        let c = run_pass(&cpu, &cfg, &params, &ids, (batch, seq), &dlogp, t);
        println!(
            "{} (hidden {}, head_dim {}, tied {}):",
            cfg.architecture, cfg.hidden_size, cfg.head_dim, cfg.tie_word_embeddings
        );
        check("logp", &g.logp, &c.logp, value);
        check("entropy", &g.entropy, &c.entropy, grad);
        let names = Params::spec(&cfg)
            .tensors()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>();
        assert_eq!(names.len(), g.grads.len());
        for ((name, gg), cg) in names.iter().zip(&g.grads).zip(&c.grads) {
            check(&format!("d {name}"), gg, cg, grad);
        }
    }
}

fn decode_case<B: Backend>(gpu: &B, r: &mut Rand) {
    decode_case_within(gpu, r, VALUE_TOL);
}

/// `decode_case` with the bound for the logits.
fn decode_case_within<B: Backend>(gpu: &B, r: &mut Rand, tol: f64) {
    let cpu = Cpu::new();
    for cfg in configs() {
        let params = common::random_params(&cfg, r.gen());
        let (prompts, steps) = decode_inputs(r, &cfg, 4);
        let (g, _) = decode_logits(gpu, &cfg, &params, &prompts, &steps, true);
        let (c, _) = decode_logits(&cpu, &cfg, &params, &prompts, &steps, true);
        for (i, (gs, cs)) in g.iter().zip(&c).enumerate() {
            check(&format!("logits after {i} decode steps"), gs, cs, tol);
        }
    }
}

/// The prefill logits, then those of each decode step (one token per sequence), through a
/// `Decoder`: from its second step on, a backend that records replays the step from a
/// recording (a CUDA graph). The flag says whether it did. `stacked`: the decoder's q/k/v and
/// gate/up projections as one GEMM each (the default), or one GEMM per weight.
fn decode_logits<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    prompts: &[Vec<u32>],
    steps: &[Vec<u32>],
    stacked: bool,
) -> (Vec<Vec<f32>>, bool) {
    let model = Llama::from_host(be, cfg.clone(), params).unwrap();
    let mut decoder = Decoder::with_stacking(be, &model, prompts.len(), 32, stacked).unwrap();
    let mut out = vec![be.download(&decoder.prefill(prompts).unwrap()).unwrap()];
    let mut pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    for tokens in steps {
        let l = decoder.step(tokens, &pos).unwrap();
        out.push(be.download(l).unwrap());
        pos.iter_mut().for_each(|p| *p += 1);
    }
    (out, decoder.is_recorded())
}

/// Prompts of 5, 17 and 1 tokens and `n_steps` decode steps of random tokens.
fn decode_inputs(r: &mut Rand, cfg: &LlamaConfig, n_steps: usize) -> DecodeInputs {
    let v = cfg.vocab_size as u32;
    let prompts: Vec<Vec<u32>> = [5usize, 17, 1]
        .iter()
        .map(|&n| (0..n).map(|_| r.gen_range(0..v)).collect())
        .collect();
    let steps = (0..n_steps)
        .map(|_| (0..prompts.len()).map(|_| r.gen_range(0..v)).collect())
        .collect();
    (prompts, steps)
}

/// bf16 GEMMs through a training update: the log-probs before one AdamW step on every weight,
/// and after it, against the CPU's f32 run of the same step. In bf16 mode every GEMM reads its
/// weight through a cached bf16 copy (src/backend/cuda/buffer.rs); a copy that outlived the
/// update would leave the GPU's "after" log-probs at the old weights' values. The step is large
/// enough that the CPU's log-probs move by ≥ 10× the bound (asserted; ~0.3 relative), so a stale copy fails.
/// Bound: bf16 operands (2^-8) through 2 layers and the head, measured ~3e-3 in a host emulation
/// of single GEMMs (ops_cuda.rs, `BF16_GEMM`); 2e-2 leaves room for the depth.
const BF16_MODEL_TOL: f64 = 2e-2;

/// Gradients with gate/up and the attention output narrowed against kept in f32, both in bf16
/// mode: the difference is their bf16 rounding (≤ 2^-9 relative) carried through dgate/dup and
/// δ (op level: `cuda_narrowed_swiglu_inputs`, `cuda_narrowed_attention_output`) into every
/// earlier gradient; 1e-2.
#[cfg(feature = "cuda")]
const NARROWING_TOL: f64 = 1e-2;

fn update_cycle_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let cpu = Cpu::new();
    let cfg = common::tiny_cfg(97, true, false);
    let params = common::random_params(&cfg, r.gen());
    let (batch, seq) = (2, 29);
    let (ids, dlogp) = random_tokens(r, &cfg, batch * seq);
    let g = logp_around_update(gpu, &cfg, &params, &ids, (batch, seq), &dlogp);
    let c = logp_around_update(&cpu, &cfg, &params, &ids, (batch, seq), &dlogp);
    let moved = common::rel_err(&c.1, &c.0);
    println!("  the CPU's log-probs moved by {moved:.2e} (relative) in the update");
    assert!(
        moved >= 10.0 * BF16_MODEL_TOL,
        "the update is too small to tell a stale weight copy from rounding"
    );
    check("logp before the update", &g.0, &c.0, BF16_MODEL_TOL);
    check("logp after the update", &g.1, &c.1, BF16_MODEL_TOL);
}

/// Log-probs, then one AdamW step (lr 0.1) on every parameter with the gradients of
/// `Σ dlogp · logp`, then the log-probs again, on one model instance.
fn logp_around_update<B: Backend>(
    be: &B,
    cfg: &LlamaConfig,
    params: &Params<Vec<f32>>,
    ids: &[u32],
    (batch, seq): (usize, usize),
    dlogp: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let mut model = Llama::from_host(be, cfg.clone(), params).unwrap();
    let targets = be.upload_ids(&shifted_targets(ids, batch, seq)).unwrap();
    let logp = |model: &Llama<B>| {
        let fwd = model.forward(be, ids, batch, seq).unwrap();
        let (lp, _, lse) = model.token_logprobs(be, &fwd, &targets, 1.0).unwrap();
        (fwd, lp, lse)
    };
    let (fwd, lp, lse) = logp(&model);
    let before = be.download(&lp).unwrap();
    let mut grads = model.zeros_like_params(be).unwrap();
    let d = be.upload(dlogp).unwrap();
    model
        .logprob_backward(be, &fwd, &targets, &lse, &d, 1.0, &mut grads)
        .unwrap();
    drop(fwd);
    for (p, g) in model.params.tensors_mut().into_iter().zip(grads.tensors()) {
        let n = be.len(p);
        let (mut m, mut v) = (be.zeros(n).unwrap(), be.zeros(n).unwrap());
        be.adamw_step(p, g, &mut m, &mut v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
            .unwrap();
    }
    let (_, lp, _) = logp(&model);
    (before, be.download(&lp).unwrap())
}

/// Bf16 GEMM mode, where the projections' inputs are narrowed to bf16 (`keep_as_gemm_input`)
/// and so are SwiGLU's gate and up (`keep_as_swiglu_input`) and the attention output
/// (`keep_as_attention_output`):
/// (1) log-probs and every gradient against the CPU's f32 values, bound `BF16_MODEL_TOL` for
/// both (gradients through bf16 dW GEMMs of every projection; an estimate from the per-GEMM
/// emulation, to be confirmed by the first GPU run); (2) the same pass with narrowing off: the
/// log-probs must agree to 1e-6 (the same bf16 values reach the same GEMMs, and the forward
/// reads gate/up before they are narrowed: only a wrong copy would differ); the gradients
/// within `NARROWING_TOL`, since the SwiGLU backward and δ then start from bf16 values.
/// One pass with the saved activations narrowed (`keep_as_*`) and one with them kept in f32,
/// on the same fresh weights and tokens; narrowing is left on.
#[cfg(feature = "cuda")]
fn narrowed_and_f32_passes(
    gpu: &mut cada::backend::cuda::Cuda,
    rng: &mut Rand,
    cfg: &LlamaConfig,
    (batch, seq): (usize, usize),
) -> (Pass, Pass) {
    let params = common::random_params(cfg, rng.gen());
    let (ids, dlogp) = random_tokens(rng, cfg, batch * seq);
    gpu.set_narrow_saved_inputs(true);
    let on = run_pass(gpu, cfg, &params, &ids, (batch, seq), &dlogp, 1.0);
    gpu.set_narrow_saved_inputs(false);
    let off = run_pass(gpu, cfg, &params, &ids, (batch, seq), &dlogp, 1.0);
    gpu.set_narrow_saved_inputs(true);
    (on, off)
}

#[test]
fn cuda_whole_model_bf16_gradients_narrowed() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        if let Some((mut gpu, mut rng)) =
            common::cuda_setup("cuda_whole_model_bf16_gradients_narrowed")
        {
            gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
            whole_model_case_within(&gpu, &mut rng, BF16_MODEL_TOL, BF16_MODEL_TOL);
            for cfg in configs() {
                let (on, off) = narrowed_and_f32_passes(&mut gpu, &mut rng, &cfg, (2, 23));
                check("logp, narrowed vs f32 inputs", &on.logp, &off.logp, 1e-6);
                let mut largest: f64 = 0.0;
                for (i, (a, b)) in on.grads.iter().zip(&off.grads).enumerate() {
                    let what = format!("gradient {i}, narrowed vs f32 inputs");
                    check(&what, a, b, NARROWING_TOL);
                    largest = largest.max(common::rel_err(a, b));
                }
                // gate/up and the attention output really were narrowed: their rounding shows
                // (identical passes would give 0; bf16 rounding gives ~1e-3)
                assert!(
                    largest > 1e-5,
                    "narrowing changed no gradient ({largest:.1e}): nothing was narrowed"
                );
            }
            println!(
                "cuda_whole_model_bf16_gradients_narrowed: ran on the GPU and matched the CPU"
            );
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_whole_model_bf16_gradients_narrowed: skipped: no GPU (built without the `cuda` \
         feature)"
    );
}

#[test]
fn cuda_whole_model_bf16_update_cycle() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::GemmPrecision;
        if let Some((mut gpu, mut rng)) = common::cuda_setup("cuda_whole_model_bf16_update_cycle") {
            gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
            update_cycle_case(&gpu, &mut rng);
            println!("cuda_whole_model_bf16_update_cycle: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_whole_model_bf16_update_cycle: skipped: no GPU (built without the `cuda` feature)"
    );
}

/// The tensor-core attention (`AttentionKernel::Mma`) in the whole model, f32 GEMMs (and once
/// with bf16 GEMMs, the full tensor-core mix):
/// (1) log-probs, entropies and every gradient against the CPU, and the prefill + decode
/// logits (the prefill's attention is the mma one, decode steps the f32 decode kernel), bound
/// `BF16_MODEL_TOL` (the attention rounds q, k, v, dO, P and dS to bf16: ~3e-3 per call in the
/// host emulation, kernels/emulation/); (2) q, k, v narrowed to bf16 (`keep_as_attention_input`)
/// against kept in f32: the kernels read the same bf16 copies, so 1e-6.
#[test]
fn cuda_whole_model_mma_attention() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{AttentionKernel, GemmPrecision};
        if let Some((mut gpu, mut rng)) = common::cuda_setup("cuda_whole_model_mma_attention") {
            gpu.set_attention_kernel(AttentionKernel::Mma);
            whole_model_case_within(&gpu, &mut rng, BF16_MODEL_TOL, BF16_MODEL_TOL);
            decode_case_within(&gpu, &mut rng, BF16_MODEL_TOL);
            // the tensor-core mix a user runs: bf16 GEMMs too, every saved activation that can
            // be kept in bf16 alone is (q/k/v, attention output, GEMM inputs, gate/up)
            gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
            whole_model_case_within(&gpu, &mut rng, BF16_MODEL_TOL, BF16_MODEL_TOL);
            gpu.set_gemm_precision(GemmPrecision::F32).unwrap();
            for cfg in configs() {
                let (batch, seq) = (2, 71);
                let params = common::random_params(&cfg, rng.gen());
                let (ids, _) = random_tokens(&mut rng, &cfg, batch * seq);
                let (on, off) = narrowed_and_f32_passes(&mut gpu, &mut rng, &cfg, (batch, seq));
                check("logp, narrowed q/k/v vs f32", &on.logp, &off.logp, 1e-6);
                for (i, (a, b)) in on.grads.iter().zip(&off.grads).enumerate() {
                    check(&format!("gradient {i}, narrowed q/k/v vs f32"), a, b, 1e-6);
                }
                // the model did narrow: the f32 attention's backward now refuses q, k, v
                let model = Llama::from_host(&gpu, cfg.clone(), &params).unwrap();
                let fwd = model.forward(&gpu, &ids, batch, seq).unwrap();
                gpu.set_attention_kernel(AttentionKernel::Simt);
                let dh = gpu
                    .upload(&vec![1e-3; batch * seq * cfg.hidden_size])
                    .unwrap();
                let mut grads = model.zeros_like_params(&gpu).unwrap();
                let e = model.backward(&gpu, &fwd, &dh, &mut grads).unwrap_err();
                let e = format!("{e:#}");
                assert!(e.contains("attention_backward (simt)"), "{e}");
                gpu.set_attention_kernel(AttentionKernel::Mma);
            }
            println!("cuda_whole_model_mma_attention: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_whole_model_mma_attention: skipped: no GPU (built without the `cuda` feature)");
}

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
/// the GPU, with and without qkv biases. The bf16 operands are the same roundings either way;
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

/// The inference forward (no activations saved, buffers reused by every layer; the prefill,
/// the reference model, scoring) against the saving forward on the GPU, in the f32 defaults
/// and in the full tensor-core mix (bf16 GEMMs with narrowed GEMM inputs, the mma attention
/// with narrowed q/k/v). A narrowed buffer is read through the same bf16 copy the inference
/// path converts, so 1e-6 (equal to the bit expected; whether they are is printed). Both
/// against the CPU too (bounds as the whole-model tests').
#[test]
fn cuda_inference_forward_matches_saving_forward() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{AttentionKernel, GemmPrecision};
        let name = "cuda_inference_forward_matches_saving_forward";
        if let Some((mut gpu, mut rng)) = common::cuda_setup(name) {
            for (precision, attention) in [
                (GemmPrecision::F32, AttentionKernel::Simt),
                (GemmPrecision::Bf16, AttentionKernel::Mma),
            ] {
                gpu.set_gemm_precision(precision).unwrap();
                gpu.set_attention_kernel(attention);
                for cfg in configs() {
                    let params = common::random_params(&cfg, rng.gen());
                    let (batch, seq) = (3, 37);
                    let (ids, _) = random_tokens(&mut rng, &cfg, batch * seq);
                    let model = Llama::from_host(&gpu, cfg.clone(), &params).unwrap();
                    let saving = gpu
                        .download(&model.forward(&gpu, &ids, batch, seq).unwrap().hidden)
                        .unwrap();
                    let inference = model
                        .forward_inference(&gpu, &ids, batch, seq, |_, _, _| Ok(()))
                        .unwrap();
                    let inference = gpu.download(&inference).unwrap();
                    let what =
                        format!("{precision:?} + {attention:?}: hidden, inference vs saving");
                    check(&what, &inference, &saving, 1e-6);
                    println!("  {what}: equal to the bit: {}", inference == saving);
                    let cpu = Cpu::new();
                    let reference = Llama::from_host(&cpu, cfg.clone(), &params).unwrap();
                    let want = reference.forward(&cpu, &ids, batch, seq).unwrap().hidden;
                    let tol = if precision == GemmPrecision::F32 {
                        VALUE_TOL
                    } else {
                        BF16_MODEL_TOL
                    };
                    check(
                        &format!("{precision:?} + {attention:?}: hidden vs CPU"),
                        &inference,
                        &want,
                        tol,
                    );
                }
            }
            println!("{name}: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_inference_forward_matches_saving_forward: skipped: no GPU (built without the `cuda` \
         feature)"
    );
}

gpu_test!(cuda_whole_model_logprobs_and_gradients, whole_model_case);
gpu_test!(cuda_whole_model_kv_cache_decode, decode_case);

/// The CPU against itself through the same bodies: proves the comparison code itself runs
/// (and that the two passes agree exactly on one device), so a GPU failure is the GPU's.
#[test]
fn cpu_twin_bodies_agree_with_themselves() {
    let cpu = Cpu::new();
    let mut r = <Rand as rand::SeedableRng>::seed_from_u64(3);
    whole_model_case(&cpu, &mut r);
    decode_case(&cpu, &mut r);
    update_cycle_case(&cpu, &mut r);
}
