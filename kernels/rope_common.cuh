// RoPE's per-model constants and the one place its element pairs are worked out, shared by
// rope_apply (rope.cu) and the decode step's RoPE + cache write (decode_attention.cu), so the
// two agree bit for bit.
#pragma once
#include "common.cuh"

// Rotate-half over the first `rotary_dim` dims of a head: pair (i, i + rotary_dim/2) turns by
// position·inv_freq[i]; the rotated dims are multiplied by `scale` (LongRoPE's attention factor,
// 1 otherwise), the dims from `rotary_dim` on pass through unchanged (Phi-4-mini's partial
// rotary). rotary_dim == head_dim and scale == 1 is the plain Llama RoPE.
struct RopeDims {
    int rotary_dim;
    float scale;
};

// Pair p of a head, p in [0, head_dim/2): p < rotary_dim/2 is a rotated pair; the others each
// carry two pass-through dims (e1 in the first half of [rotary_dim, head_dim), e2 in the second),
// with c = 1, s = 0, so one thread per pair covers the whole head with the same arithmetic.
// sign = +1 forward, -1 the inverse rotation (the backward: scale·R is scaled orthogonal).
__device__ __forceinline__ void rope_pair(int p, int head_dim, RopeDims r, unsigned int position,
                                          const float* inv_freq, float sign, int* e1, int* e2,
                                          float* c, float* s) {
    const int rot_half = r.rotary_dim / 2;
    if (p < rot_half) {
        // the same f32 product as the CPU reference; accurate sincosf (no fast-math)
        const float angle = (float)position * inv_freq[p];
        float sn, cs;
        sincosf(angle, &sn, &cs);
        *e1 = p;
        *e2 = p + rot_half;
        *c = cs * r.scale;
        *s = sign * (sn * r.scale);
    } else {
        *e1 = r.rotary_dim + (p - rot_half);
        *e2 = *e1 + (head_dim - r.rotary_dim) / 2;
        *c = 1.0f;
        *s = 0.0f;
    }
}
