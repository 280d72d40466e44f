// Host emulation (see cuda_runtime.h): the bf16 type and conversion the f32 kernels use when
// they read a buffer kept in bf16.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t u = (uint32_t)b.bits << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
