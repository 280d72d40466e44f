//! Hopper's wgmma training attention (attention_wgmma.cu, `AttentionKernel::Wgmma`, forward and
//! backward, compute capability 9.0 only) against the CPU reference, per op and in the whole
//! model. A binary of its own: these kernels are the newest and the only sm_90a-only ones, and a
//! fault in one would poison the CUDA context of every test sharing its process. Fresh random
//! inputs every run, outputs poisoned with NaN before each launch, the mma kernels' bounds
//! (common/attention_twin.rs). Without a GPU every test prints "skipped: no GPU"; on a GPU
//! that is not 9.0 it prints that it skipped and why.

#[macro_use]
mod common;

#[cfg(feature = "cuda")]
use common::attention_twin::*;
#[cfg(feature = "cuda")]
use common::model_twin::*;

/// `AttentionKernel::Wgmma` (attention_wgmma.cu, forward and backward) against
/// the CPU at the mma shapes plus longer ones (blocks where one warpgroup's rows end before the
/// other's diagonal tile; several pipeline slots reused), mixed with the f32 kernels, and with
/// narrowed inputs. A GPU that is not compute capability 9.0 cannot run it: the test says so.
#[test]
fn cuda_attention_wgmma() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::AttentionKernel;
        if let Some((mut gpu, mut rng)) = common::cuda_setup("cuda_attention_wgmma") {
            if !gpu.supports_wgmma() {
                println!(
                    "cuda_attention_wgmma: skipped: this GPU is not compute capability 9.0 \
                     (wgmma is in the sm_90a cubin only)"
                );
                return;
            }
            gpu.set_attention_kernel(AttentionKernel::Wgmma);
            tensor_core_case(&gpu, &mut rng);
            for s in [attn_shape(1, 300, 2, 1, 128), attn_shape(2, 1000, 3, 1, 64)] {
                attention_shape(&gpu, &mut rng, s, MMA_TOLS);
            }
            let tc = AttentionKernel::Wgmma;
            attention_mixed(&mut gpu, &mut rng, attn_shape(2, 77, 9, 3, 64), tc);
            for s in [attn_shape(2, 77, 9, 3, 64), attn_shape(2, 33, 2, 1, 37)] {
                attention_narrowed(&mut gpu, &mut rng, s, tc);
            }
            println!("cuda_attention_wgmma: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_attention_wgmma: skipped: no GPU (built without the `cuda` feature)");
}

/// Hopper's wgmma attention (`AttentionKernel::Wgmma`, forward and backward) in the
/// whole model: log-probs, entropies and every gradient against the CPU with f32 and with bf16
/// GEMMs, and the prefill + decode logits, bounds as the mma attention's. Compute capability
/// 9.0 only; elsewhere the test says it skipped.
#[test]
fn cuda_whole_model_wgmma_attention() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::{AttentionKernel, GemmPrecision};
        if let Some((mut gpu, mut rng)) = common::cuda_setup("cuda_whole_model_wgmma_attention") {
            if !gpu.supports_wgmma() {
                println!(
                    "cuda_whole_model_wgmma_attention: skipped: this GPU is not compute \
                     capability 9.0 (wgmma is in the sm_90a cubin only)"
                );
                return;
            }
            gpu.set_attention_kernel(AttentionKernel::Wgmma);
            whole_model_case_within(&gpu, &mut rng, BF16_MODEL_TOL, BF16_MODEL_TOL);
            decode_case_within(&gpu, &mut rng, BF16_MODEL_TOL);
            gpu.set_gemm_precision(GemmPrecision::Bf16).unwrap();
            whole_model_case_within(&gpu, &mut rng, BF16_MODEL_TOL, BF16_MODEL_TOL);
            println!("cuda_whole_model_wgmma_attention: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!(
        "cuda_whole_model_wgmma_attention: skipped: no GPU (built without the `cuda` feature)"
    );
}

/// kernels/wgmma_probe.cu: the two wgmma forms alone, on bf16-exact random inputs, against the
/// CPU's products (f32 accumulation of 16 exact products: 1e-6). Which one fails says which
/// layout is wrong: A·Bᵀ the K-major shared-memory descriptors, A·W the N-major descriptor or
/// the A fragments, both the accumulator layout.
#[test]
fn cuda_wgmma_layout_probe() {
    #[cfg(feature = "cuda")]
    {
        use rand::Rng;
        if let Some((gpu, mut rng)) = common::cuda_setup("cuda_wgmma_layout_probe") {
            if !gpu.supports_wgmma() {
                println!(
                    "cuda_wgmma_layout_probe: skipped: this GPU is not compute capability 9.0 \
                     (wgmma is in the sm_90a cubin only)"
                );
                return;
            }
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| half::bf16::from_f32(rng.gen_range(-1.0..1.0)).to_f32())
                    .collect()
            };
            let (a, bt, w) = (draw(64 * 16), draw(64 * 16), draw(16 * 64));
            let (d_ss, d_rs) = gpu.wgmma_layout_probe(&a, &bt, &w).unwrap();
            let (mut want_ss, mut want_rs) = (vec![0f32; 64 * 64], vec![0f32; 64 * 64]);
            for i in 0..64 {
                for j in 0..64 {
                    let (mut ss, mut rs) = (0f64, 0f64);
                    for k in 0..16 {
                        ss += a[i * 16 + k] as f64 * bt[j * 16 + k] as f64;
                        rs += a[i * 16 + k] as f64 * w[k * 64 + j] as f64;
                    }
                    want_ss[i * 64 + j] = ss as f32;
                    want_rs[i * 64 + j] = rs as f32;
                }
            }
            let e_ss = common::rel_err(&d_ss, &want_ss);
            let e_rs = common::rel_err(&d_rs, &want_rs);
            println!("  A·Bt (shared memory, K-major): rel err {e_ss:.2e}");
            println!("  A·W (registers × shared memory, N-major): rel err {e_rs:.2e}");
            assert!(
                e_ss <= 1e-6 && e_rs <= 1e-6,
                "wgmma layout probe: A·Bt {e_ss:.2e}, A·W {e_rs:.2e} (bound 1e-6)"
            );
            println!("cuda_wgmma_layout_probe: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda_wgmma_layout_probe: skipped: no GPU (built without the `cuda` feature)");
}
