// RMSNorm with f32 statistics (Hugging Face LlamaRMSNorm): out = x * rstd * w,
// rstd = 1/sqrt(mean(x²) + eps). x, out: [n, dim]; w: [dim]; rstd: [n].
#include "rmsnorm_common.cuh"

#include <cuda_bf16.h>

// out[c] = x[c]·r·w[c] for one row, and its bf16 rounding (RNE, as f32_to_bf16) into out16
// when there is one: the bf16 GEMM mode's copy of a GEMM input, made where the values are.
__device__ __forceinline__ void rmsnorm_write_row(float* o, __nv_bfloat16* o16, const float* xr,
                                                  const float* w, int dim, float r) {
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float v = xr[c] * r * w[c];
        o[c] = v;
        if (o16) o16[c] = __float2bfloat16_rn(v);
    }
}

__device__ __forceinline__ void rmsnorm_forward_rows(float* out, __nv_bfloat16* out16,
                                                     float* rstd, const float* x, const float* w,
                                                     int dim, float eps) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    const float* xr = x + row * dim;
    const float r = rmsnorm_row_rstd(xr, dim, eps, scratch);
    if (threadIdx.x == 0) rstd[row] = r;
    rmsnorm_write_row(out + row * dim, out16 ? out16 + row * dim : nullptr, xr, w, dim, r);
}

// One block per row.
CADA_KERNEL void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w,
                                 int dim, float eps) {
    rmsnorm_forward_rows(out, nullptr, rstd, x, w, dim, eps);
}

// The same, also writing out's bf16 copy (the bf16 GEMM mode: the GEMMs that read `out`
// then convert nothing).
CADA_KERNEL void rmsnorm_forward_with_bf16(float* out, __nv_bfloat16* out16, float* rstd,
                                           const float* x, const float* w, int dim, float eps) {
    rmsnorm_forward_rows(out, out16, rstd, x, w, dim, eps);
}

// The decode step's residual add fused with the RMSNorm after it: x += delta, then
// out = rmsnorm(x)·w exactly as rmsnorm_forward computes it (one launch and one pass over x
// instead of two). Each thread re-reads only the elements it wrote. One block per row.
__device__ __forceinline__ void add_rmsnorm_forward_rows(float* x, float* out,
                                                         __nv_bfloat16* out16, float* rstd,
                                                         const float* delta, const float* w,
                                                         int dim, float eps) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    float* xr = x + row * dim;
    const float* dr = delta + row * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) xr[c] += dr[c];
    const float r = rmsnorm_row_rstd(xr, dim, eps, scratch);
    if (threadIdx.x == 0) rstd[row] = r;
    rmsnorm_write_row(out + row * dim, out16 ? out16 + row * dim : nullptr, xr, w, dim, r);
}

CADA_KERNEL void add_rmsnorm_forward(float* x, float* out, float* rstd, const float* delta,
                                     const float* w, int dim, float eps) {
    add_rmsnorm_forward_rows(x, out, nullptr, rstd, delta, w, dim, eps);
}

// The same, also writing out's bf16 copy (see rmsnorm_forward_with_bf16).
CADA_KERNEL void add_rmsnorm_forward_with_bf16(float* x, float* out, __nv_bfloat16* out16,
                                               float* rstd, const float* delta, const float* w,
                                               int dim, float eps) {
    add_rmsnorm_forward_rows(x, out, out16, rstd, delta, w, dim, eps);
}

// dx = rstd·w·dy − x·rstd³·mean(x·w·dy). One block per row; writes dx.
CADA_KERNEL void rmsnorm_backward_input(float* dx, const float* dout, const float* x,
                                        const float* w, const float* rstd, int dim) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    const float* xr = x + row * dim;
    const float* dy = dout + row * dim;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) acc += xr[c] * w[c] * dy[c];
    const float mean_dot = block_sum(acc, scratch) / (float)dim;
    const float r = rstd[row];
    float* d = dx + row * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        d[c] = r * w[c] * dy[c] - xr[c] * r * r * r * mean_dot;
}

// dw[c] += Σ_rows dout·x·rstd. Thread per column (coalesced), blockIdx.y = slice of rows,
// slices combined with atomics.
CADA_KERNEL void rmsnorm_backward_weight(float* dw, const float* dout, const float* x,
                                         const float* rstd, int64_t n, int dim,
                                         int64_t rows_per_slice) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_slice;
    const int64_t r1 = min(n, r0 + rows_per_slice);
    float acc = 0.0f;
    for (int64_t r = r0; r < r1; ++r) acc += dout[r * dim + c] * x[r * dim + c] * rstd[r];
    atomicAdd(&dw[c], acc);
}
