// What the decode attentions over the KV cache share (decode_attention.cu, decode_attention_split.cu):
// the cache's shape, its two element types and the per-lane geometry. The cache is
// [slots, capacity, Hkv·hd]; row b uses slot b and attends to positions 0..=positions[b].
#pragma once
#include "common.cuh"

#include <cuda_bf16.h>

#define DEC_MAX_HD 128
#define DEC_PER_LANE (DEC_MAX_HD / 32)
#define DEC_WARPS 4

struct DecodeDims {
    int batch, capacity, n_heads, n_kv_heads, head_dim;
};

// A cache element from / to f32: the one place the two cache types differ.
__device__ __forceinline__ float cache_load(const float* p) { return *p; }
__device__ __forceinline__ float cache_load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void cache_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void cache_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// The 8 bf16 values of a 16-byte load, widened to f32 (bf16 is f32's top half: a shift or a
// mask, element 0 in the low half of .x). Bit operations rather than a bf16 pointer into the
// vector, which host C++ (the emulation) may not alias.
__device__ __forceinline__ void widen8_bf16(uint4 raw, float (&kf)[8]) {
    const unsigned int w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        kf[2 * e] = __uint_as_float(w[e] << 16);
        kf[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
    }
}
