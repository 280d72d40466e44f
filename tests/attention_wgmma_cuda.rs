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
