//! Two training-attention implementations against the CPU reference: the f32 kernels
//! (attention.cu, `AttentionKernel::Simt`) and the bf16 tensor-core kernels (attention_mma.cu,
//! `AttentionKernel::Mma`), forward (out, lse) and backward (dq, dk, dv), at shapes that are not
//! tile multiples, plus the two mixed (one's forward feeding the other's backward); bodies in
//! common/attention_twin.rs (Hopper's wgmma kernels: attention_wgmma_cuda.rs; the decode
//! attention over a KV cache: decode_attention_cuda.rs). Fresh random
//! inputs every run, outputs poisoned with NaN before each launch; the bounds sit beside each
//! implementation. Without a GPU every test prints "skipped: no GPU".
#![allow(clippy::too_many_arguments)]

#[macro_use]
mod common;

#[cfg(not(feature = "cuda"))]
use cada::backend::cpu::Cpu;
use cada::backend::Backend;
use common::attention_twin::*;
use rand_chacha::ChaCha8Rng as Rand;

fn attention_case<B: Backend>(gpu: &B, r: &mut Rand) {
    let t = SIMT_TOLS;
    attention_shape(gpu, r, attn_shape(2, 37, 4, 2, 64), t); // GQA group 2, seq not a tile multiple
    attention_shape(gpu, r, attn_shape(1, 45, 3, 1, 128), t); // MQA, hd 128
    attention_shape(gpu, r, attn_shape(3, 9, 2, 2, 40), t); // hd not a multiple of 32
}

gpu_test!(cuda_attention, attention_case);

/// `AttentionKernel::Mma` against the CPU, then the two implementations mixed: the f32 forward's
/// `lse` feeding the mma backward and the mma forward's feeding the f32 backward.
#[test]
fn cuda_attention_mma() {
    #[cfg(feature = "cuda")]
    {
        use cada::backend::cuda::AttentionKernel;
        if let Some((mut gpu, mut rng)) = common::cuda_setup("cuda_attention_mma") {
            gpu.set_attention_kernel(AttentionKernel::Mma);
            assert_eq!(gpu.attention_kernel(), AttentionKernel::Mma);
            tensor_core_case(&gpu, &mut rng);
            attention_mixed(
                &mut gpu,
                &mut rng,
                attn_shape(2, 77, 9, 3, 64),
                AttentionKernel::Mma,
            );
            for s in [attn_shape(2, 77, 9, 3, 64), attn_shape(2, 33, 2, 1, 37)] {
                attention_narrowed(&mut gpu, &mut rng, s, AttentionKernel::Mma);
            }
            println!("cuda_attention_mma: ran on the GPU and matched the CPU");
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        println!("cuda_attention_mma: skipped: no GPU (built without the `cuda` feature)");
        let _unused = tensor_core_case::<Cpu>;
    }
}
