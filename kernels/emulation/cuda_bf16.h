// Host emulation (see cuda_runtime.h): the bf16 types and conversions the kernels use, rounding
// to nearest even as the hardware's `cvt.rn.bf16.f32` does (NaN stays a quiet NaN, a value past
// the largest bf16 rounds to ±inf).
#pragma once
#include <cstdint>
#include <cstring>

namespace emu {
inline uint16_t bf16_bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
inline float bf16_value(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
}  // namespace emu

struct __nv_bfloat16 {
    uint16_t bits;
};
// .x is the low half of the 32-bit word, as in CUDA
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bf16_value(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return {emu::bf16_bits(x)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
