// Token embedding lookup and its scatter-add backward. table/dtable: [vocab, dim].
#include "common.cuh"

// One block per row (grid.x = n, so up to 2^31-1 rows).
// An id past the table (a caller bug) yields a NaN row instead of an out-of-bounds read, so the
// model's finiteness check stops the step.
CADA_KERNEL void embedding_forward(float* out, const float* table, const unsigned int* ids,
                                   int dim, int64_t vocab) {
    const int64_t row = blockIdx.x;
    float* dst = out + row * dim;
    if ((int64_t)ids[row] >= vocab) {
        for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = CUDART_NAN_F;
        return;
    }
    const float* src = table + (int64_t)ids[row] * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = src[c];
}

// dtable[ids[row]] += dout[row]. Rows sharing a token id collide, hence atomics: the sum is
// exact up to f32 reassociation (order varies between runs).
CADA_KERNEL void embedding_backward(float* dtable, const float* dout, const unsigned int* ids,
                                    int dim, int64_t vocab) {
    const int64_t row = blockIdx.x;
    if ((int64_t)ids[row] >= vocab) return;  // the forward already produced NaN for this row
    float* dst = dtable + (int64_t)ids[row] * dim;
    const float* src = dout + row * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(&dst[c], src[c]);
}
