// Elementwise ops and reductions over flat f32 buffers (see kernels/README.md).
#include "common.cuh"

CADA_KERNEL void fill_f32(float* y, float value, int64_t n) {
    GRID_STRIDE(i, n) y[i] = value;
}

CADA_KERNEL void add_assign_f32(float* y, const float* x, int64_t n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

CADA_KERNEL void scale_f32(float* y, float s, int64_t n) {
    GRID_STRIDE(i, n) y[i] *= s;
}

// Stage 1 of Σ y²: one f32 partial per block (tree-reduced inside the block); the host adds the
// partials in f64.
CADA_KERNEL void sum_squares_partial(const float* y, int64_t n, float* partials) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    GRID_STRIDE(i, n) acc += y[i] * y[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Sets *flag to 1 when any element is NaN or ±inf (the host zeroes the flag first).
CADA_KERNEL void any_nonfinite(const float* y, int64_t n, unsigned int* flag) {
    bool bad = false;
    GRID_STRIDE(i, n) bad |= !isfinite(y[i]);
    if (__any_sync(0xffffffffu, bad) && (threadIdx.x & 31) == 0) atomicOr(flag, 1u);
}

// out[r, c] += bias[c] for a row-major [rows, cols] matrix (the linear layer's bias).
CADA_KERNEL void add_bias_rows(float* out, const float* bias, int64_t rows, int cols) {
    GRID_STRIDE(i, rows * cols) out[i] += bias[i % cols];
}

// dbias[c] += Σ_r dout[r, c]: one thread per column walks the rows (coalesced across threads);
// blockIdx.y splits the rows into slices added with atomics.
CADA_KERNEL void bias_grad_cols(float* dbias, const float* dout, int64_t rows, int cols,
                                int64_t rows_per_slice) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_slice;
    const int64_t r1 = min(rows, r0 + rows_per_slice);
    float acc = 0.0f;
    for (int64_t r = r0; r < r1; ++r) acc += dout[r * cols + c];
    atomicAdd(&dbias[c], acc);
}
