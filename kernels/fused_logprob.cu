// Fused log-prob head: the vocabulary is streamed in chunks. For each chunk the host runs one
// cuBLAS GEMM z[n, c] = hidden · W[c0:c0+c]ᵀ into a [n × chunk] scratch, then these kernels fold
// the chunk into per-row running statistics (online log-sum-exp): m (max), s0 = Σ e^(z−m),
// s1 = Σ e^(z−m)·(z−m) and the target's logit. s1 is taken about the max so the entropy,
// log s0 − s1/s0, never subtracts two numbers near lse (as lse − E[z] would, losing
// ~|lse|·2^-24 on a peaked row). The formulas of src/backend/cpu/fused_logprob.rs (nvcc may
// fuse z·(1/T) − m into one FMA, so the max element's d can be ±½ ulp instead of 0).
// Nothing of size n × vocab is ever allocated.
// Rows go on grid.x (limit 2^31−1), never on grid.y/z (limit 65535).
#include "common.cuh"

#include <cuda_bf16.h>

CADA_KERNEL void logprob_state_init(float* m, float* s0, float* s1, float* zt, int64_t n) {
    GRID_STRIDE(i, n) {
        m[i] = -CUDART_INF_F;
        s0[i] = 0.f;
        s1[i] = 0.f;
        zt[i] = 0.f;
    }
}

// One block per row; z is the chunk's raw logits [rows, c] (scaled by 1/T here).
CADA_KERNEL void logprob_chunk_update(const float* z, int c, int c0, const unsigned int* targets,
                                      float inv_t, float* m, float* s0, float* s1, float* zt) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    const float* zr = z + row * c;
    float cm = -CUDART_INF_F;
    for (int j = threadIdx.x; j < c; j += blockDim.x) cm = fmaxf(cm, zr[j] * inv_t);
    cm = block_max(cm, scratch);
    const float old_m = m[row];
    const float nm = fmaxf(old_m, cm);
    float a0 = 0.f, a1 = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const float d = zr[j] * inv_t - nm;
        const float e = expf(d);
        a0 += e;
        if (e > 0.f) a1 += e * d;  // a −inf logit adds nothing (not 0·(−inf) = NaN)
    }
    a0 = block_sum(a0, scratch);
    a1 = block_sum(a1, scratch);
    if (threadIdx.x == 0) {
        if (old_m == -CUDART_INF_F) {
            s0[row] = a0;
            s1[row] = a1;
        } else {
            // re-centre the old sums on the new max: z − nm = (z − m) + (m − nm)
            const float shift = old_m - nm;
            const float rescale = expf(shift);
            s1[row] = rescale * (s1[row] + shift * s0[row]) + a1;
            s0[row] = s0[row] * rescale + a0;
        }
        m[row] = nm;
        const int t = (int)targets[row] - c0;
        if (t >= 0 && t < c) zt[row] = zr[t] * inv_t;
    }
}

// lse = m + log s0; logp = min(z_target − lse, 0) (rounding can push it a hair above 0);
// entropy = lse − E[z] = log s0 − s1/s0 (s1 is about the max m).
CADA_KERNEL void logprob_finish(float* logp, float* entropy, float* lse, const float* m,
                                const float* s0, const float* s1, const float* zt, int64_t n) {
    GRID_STRIDE(i, n) {
        const float l = m[i] + logf(s0[i]);
        lse[i] = l;
        logp[i] = fminf(zt[i] - l, 0.f);
        entropy[i] = logf(s0[i]) - s1[i] / s0[i];
    }
}

// Backward: g = dlogp·(onehot(target) − softmax(z/T))/T for element i of the chunk's recomputed
// raw logits z[rows, c]. The host then runs dhidden += g·W_chunk and dW_chunk += gᵀ·hidden with
// cuBLAS.
__device__ __forceinline__ float chunk_grad_value(const float* z, int64_t i, int c, int c0,
                                                  const unsigned int* targets, const float* lse,
                                                  const float* dlogp, float inv_t) {
    const int64_t r = i / c;
    const int j = (int)(i % c);
    const float p = expf(z[i] * inv_t - lse[r]);
    const float delta = (int64_t)targets[r] == (int64_t)c0 + j ? 1.f : 0.f;
    return dlogp[r] * (delta - p) * inv_t;
}

// In place on z (the f32 and TF32 GEMM modes read g in f32).
CADA_KERNEL void logprob_chunk_grad(float* z, int64_t rows, int c, int c0,
                                    const unsigned int* targets, const float* lse,
                                    const float* dlogp, float inv_t) {
    GRID_STRIDE(i, rows * c) z[i] = chunk_grad_value(z, i, c, c0, targets, lse, dlogp, inv_t);
}

// The bf16 GEMM mode: both chunk GEMMs read g in bf16 only, so it is written as bf16 straight
// away (round to nearest even, the same value converting the f32 g gives): 6 bytes an element
// instead of 14 (f32 g written, read back and converted), ~20 GB less per backward at
// n = 16k, vocab = 151,936.
CADA_KERNEL void logprob_chunk_grad_bf16(__nv_bfloat16* g, const float* z, int64_t rows, int c,
                                         int c0, const unsigned int* targets, const float* lse,
                                         const float* dlogp, float inv_t) {
    GRID_STRIDE(i, rows * c) {
        g[i] = __float2bfloat16_rn(chunk_grad_value(z, i, c, c0, targets, lse, dlogp, inv_t));
    }
}
