// f32 → bf16 staging for the bf16 GEMM mode (`GemmPrecision::Bf16`): the f32 buffers stay the
// master copy, each GEMM converts its operands into bf16 scratch right before cuBLAS reads them.
#include "common.cuh"

#include <cuda_bf16.h>

// dst[i] = bf16(src[i]), round to nearest even (NaN stays NaN, overflow rounds to ±inf).
// Memory-bound: when src is 16-byte and dst 8-byte aligned each thread moves a float4 in and
// 4 bf16 out per step; otherwise (a sub-slice at an odd offset) one element per step, which is
// still coalesced. The alignment test is the same for every thread, so no warp diverges on it.
CADA_KERNEL void f32_to_bf16(__nv_bfloat16* dst, const float* src, int64_t n) {
    const bool vec = ((reinterpret_cast<uintptr_t>(src) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(dst) & 7) == 0);
    int64_t done = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        const float4* src4 = reinterpret_cast<const float4*>(src);
        uint2* dst4 = reinterpret_cast<uint2*>(dst);
        GRID_STRIDE(i, n4) {
            const float4 v = src4[i];
            const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y);  // .x in the low half
            const __nv_bfloat162 hi = __floats2bfloat162_rn(v.z, v.w);
            uint2 packed;
            packed.x = *reinterpret_cast<const uint32_t*>(&lo);
            packed.y = *reinterpret_cast<const uint32_t*>(&hi);
            dst4[i] = packed;
        }
        done = n4 << 2;
    }
    GRID_STRIDE(i, n - done) dst[done + i] = __float2bfloat16_rn(src[done + i]);
}
