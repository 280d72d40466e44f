// Qwen3's q/k path in training, fused: the per-head RMSNorm of q and of k and their RoPE in one
// launch (the composite is head_rmsnorm_forward twice, then rope_apply twice: four launches and
// a round trip of the normed q and k through memory), and its backward: the inverse rotation
// of the gradient and the norm's input gradient in one launch (then rmsnorm_backward_weight
// for each norm weight, as before).
//
// Grid (tokens, n_heads + n_kv_heads): blockIdx.y below n_heads is a head of q, the rest heads
// of k; one block per head row, blockDim = row_threads(head_dim) as head_rmsnorm_forward's and
// rmsnorm_backward_input's launches, so that each row's sums, and so every bit, are theirs
// (rmsnorm_row_rstd, rope_pair). Tokens go on x (2^31 − 1), heads on y (≤ 65535).
#include "rmsnorm_common.cuh"
#include "rope_common.cuh"

// The head row this block owns: which tensor, and the row's index in [tokens · heads].
struct QkRow {
    bool is_q;
    int64_t row;
};

__device__ __forceinline__ QkRow qk_row(int n_heads, int n_kv_heads) {
    const int64_t t = blockIdx.x;
    const int h = blockIdx.y;
    const bool is_q = h < n_heads;
    return {is_q, is_q ? t * n_heads + h : t * n_kv_heads + (h - n_heads)};
}

// q, k = RoPE(x · rstd · w) per head row; rstd_q, rstd_k keep 1/rms for the backward.
CADA_KERNEL void qk_norm_rope_forward(float* q, float* k, float* rstd_q, float* rstd_k,
                                      const float* q_raw, const float* k_raw, const float* q_norm,
                                      const float* k_norm, const unsigned int* positions,
                                      const float* inv_freq, int n_heads, int n_kv_heads,
                                      int head_dim, float eps, RopeDims r) {
    __shared__ float scratch[32];
    const QkRow at = qk_row(n_heads, n_kv_heads);
    const float* src = (at.is_q ? q_raw : k_raw) + at.row * head_dim;
    float* dst = (at.is_q ? q : k) + at.row * head_dim;
    const float* w = at.is_q ? q_norm : k_norm;
    const float rs = rmsnorm_row_rstd(src, head_dim, eps, scratch);  // every thread: it syncs
    if (threadIdx.x == 0) (at.is_q ? rstd_q : rstd_k)[at.row] = rs;
    const unsigned int pos = positions[blockIdx.x];
    for (int p = threadIdx.x; p < head_dim / 2; p += blockDim.x) {
        int e1, e2;
        float cs, sn;
        rope_pair(p, head_dim, r, pos, inv_freq, 1.0f, &e1, &e2, &cs, &sn);
        // the products rmsnorm_write_row and rope_apply compute, in their order
        const float x1 = src[e1] * rs * w[e1], x2 = src[e2] * rs * w[e2];
        dst[e1] = x1 * cs - x2 * sn;
        dst[e2] = x2 * cs + x1 * sn;
    }
}

// dq, dk (the gradients of the rotated q, k) are turned back in place into the gradients of
// the normed q, k, which rmsnorm_backward_weight then reads; dq_raw, dk_raw get the norm's
// input gradient: rstd·w·dy − x·rstd³·mean(x·w·dy).
CADA_KERNEL void qk_norm_rope_backward_input(float* dq_raw, float* dk_raw, float* dq, float* dk,
                                             const float* q_raw, const float* k_raw,
                                             const float* q_norm, const float* k_norm,
                                             const float* rstd_q, const float* rstd_k,
                                             const unsigned int* positions,
                                             const float* inv_freq, int n_heads, int n_kv_heads,
                                             int head_dim, RopeDims r) {
    __shared__ float scratch[32];
    const QkRow at = qk_row(n_heads, n_kv_heads);
    float* dy = (at.is_q ? dq : dk) + at.row * head_dim;
    const unsigned int pos = positions[blockIdx.x];
    for (int p = threadIdx.x; p < head_dim / 2; p += blockDim.x) {
        int e1, e2;
        float cs, sn;
        rope_pair(p, head_dim, r, pos, inv_freq, -1.0f, &e1, &e2, &cs, &sn);
        const float d1 = dy[e1], d2 = dy[e2];
        dy[e1] = d1 * cs - d2 * sn;
        dy[e2] = d2 * cs + d1 * sn;
    }
    // the sums below read elements other threads turned: __syncthreads makes their global
    // writes visible within the block
    __syncthreads();
    const float* xr = (at.is_q ? q_raw : k_raw) + at.row * head_dim;
    const float* w = at.is_q ? q_norm : k_norm;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) acc += xr[c] * w[c] * dy[c];
    const float mean_dot = block_sum(acc, scratch) / (float)head_dim;
    const float rs = (at.is_q ? rstd_q : rstd_k)[at.row];
    float* d = (at.is_q ? dq_raw : dk_raw) + at.row * head_dim;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x)
        d[c] = rs * w[c] * dy[c] - xr[c] * rs * rs * rs * mean_dot;
}
