//! The whole model on the GPU against the CPU reference: per-token log-probs, entropies and
//! every parameter gradient of forward + fused head + backward, in the f32 defaults, in bf16
//! GEMM mode (narrowed activations, an AdamW update cycle) and with the tensor-core attention,
//! and the inference forward against the saving one. The KV-cache decode tests are in
//! decode_cuda.rs; the shared bodies in common/model_twin.rs. Fresh random weights and tokens
//! every run (the seed is printed); odd lengths that are not tile multiples.
//!
//! Bounds, as in ops_cuda.rs: f32 kernels and f32 GEMMs only reorder sums, so values get 1e-5;
//! gradients, which go through cancellations (softmax, RMSNorm backward) and the embedding's
//! atomics, get 1e-4. Without a GPU every test prints "skipped: no GPU".

#[macro_use]
mod common;

use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use cada::model::config::LlamaConfig;
use cada::model::llama::{shifted_targets, Llama};
use cada::model::weights::Params;
use common::check;
use common::model_twin::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng as Rand;

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
