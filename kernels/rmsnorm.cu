// RMSNorm with f32 statistics (Hugging Face LlamaRMSNorm): out = x * rstd * w,
// rstd = 1/sqrt(mean(x²) + eps). x, out: [n, dim]; w: [dim]; rstd: [n].
#include "common.cuh"

// One block per row.
CADA_KERNEL void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w,
                                 int dim, float eps) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    const float* xr = x + row * dim;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) acc += xr[c] * xr[c];
    acc = block_sum(acc, scratch);
    const float r = 1.0f / sqrtf(acc / (float)dim + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    float* o = out + row * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = xr[c] * r * w[c];
}

// The decode step's residual add fused with the RMSNorm after it: x += delta, then
// out = rmsnorm(x)·w exactly as rmsnorm_forward computes it (one launch and one pass over x
// instead of two). Each thread re-reads only the elements it wrote. One block per row.
CADA_KERNEL void add_rmsnorm_forward(float* x, float* out, float* rstd, const float* delta,
                                     const float* w, int dim, float eps) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    float* xr = x + row * dim;
    const float* dr = delta + row * dim;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float v = xr[c] + dr[c];
        xr[c] = v;
        acc += v * v;
    }
    acc = block_sum(acc, scratch);
    const float r = 1.0f / sqrtf(acc / (float)dim + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    float* o = out + row * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = xr[c] * r * w[c];
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
