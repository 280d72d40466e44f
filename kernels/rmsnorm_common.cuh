// The one place an RMSNorm row's statistic is worked out, shared by rmsnorm.cu and the decode
// step's fused q/k norm + RoPE (decode_attention.cu), so that the two agree bit for bit when
// launched with the same block size.
#pragma once
#include "common.cuh"

// rstd of one row: 1/sqrt(mean(x²) + eps), f32 sum in a fixed per-thread order. Called by
// every thread of the block (block_sum synchronises).
__device__ __forceinline__ float rmsnorm_row_rstd(const float* xr, int dim, float eps,
                                                  float* scratch) {
    float acc = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) acc += xr[c] * xr[c];
    acc = block_sum(acc, scratch);
    return 1.0f / sqrtf(acc / (float)dim + eps);
}
