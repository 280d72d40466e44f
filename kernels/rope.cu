// Rotary position embedding, Hugging Face rotate-half layout, in place on x[n, heads·hd].
// One thread per pair of a head (rope_pair, rope_common.cuh): rotated pairs turn by angle
// positions[row]·inv_freq[i], pass-through pairs are left as they are;
// sign = +1 forward, −1 backward (the inverse rotation applied to the gradient).
#include "rope_common.cuh"

CADA_KERNEL void rope_apply(float* x, const unsigned int* positions, const float* inv_freq,
                            int64_t n, int n_heads, int head_dim, RopeDims r, float sign) {
    const int half = head_dim / 2;
    const int64_t pairs_per_row = (int64_t)n_heads * half;
    GRID_STRIDE(idx, n * pairs_per_row) {
        const int64_t row = idx / pairs_per_row;
        const int rem = (int)(idx % pairs_per_row);
        const int h = rem / half, p = rem % half;
        int e1, e2;
        float c, s;
        rope_pair(p, head_dim, r, positions[row], inv_freq, sign, &e1, &e2, &c, &s);
        float* head = x + row * (int64_t)n_heads * head_dim + (int64_t)h * head_dim;
        const float x1 = head[e1], x2 = head[e2];
        head[e1] = x1 * c - x2 * s;
        head[e2] = x2 * c + x1 * s;
    }
}
