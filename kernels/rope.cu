// Rotary position embedding, Hugging Face rotate-half layout, in place on x[n, heads·hd].
// Pair (i, i + hd/2) of every head rotates by angle positions[row]·inv_freq[i];
// sign = +1 forward, −1 backward (the inverse rotation applied to the gradient).
#include "common.cuh"

CADA_KERNEL void rope_apply(float* x, const unsigned int* positions, const float* inv_freq,
                            int64_t n, int n_heads, int head_dim, float sign) {
    const int half = head_dim / 2;
    const int64_t pairs_per_row = (int64_t)n_heads * half;
    GRID_STRIDE(idx, n * pairs_per_row) {
        const int64_t row = idx / pairs_per_row;
        const int rem = (int)(idx % pairs_per_row);
        const int h = rem / half, i = rem % half;
        // Same f32 product as the CPU reference; accurate sincosf (no fast-math).
        const float angle = (float)positions[row] * inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        s *= sign;
        float* head = x + row * (int64_t)n_heads * head_dim + (int64_t)h * head_dim;
        const float x1 = head[i], x2 = head[i + half];
        head[i] = x1 * c - x2 * s;
        head[i + half] = x2 * c + x1 * s;
    }
}
