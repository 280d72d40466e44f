// SwiGLU: out = silu(gate)·up, flat [n].
#include "common.cuh"

#include <cuda_bf16.h>

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float swiglu_value(float g, float u) { return g * sigmoidf_(g) * u; }

CADA_KERNEL void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
    GRID_STRIDE(i, n) out[i] = swiglu_value(gate[i], up[i]);
}

// The same, also writing out's bf16 rounding (RNE, as f32_to_bf16) into out16: in the bf16 GEMM
// mode the down projection then reads it without a conversion.
CADA_KERNEL void swiglu_forward_with_bf16(float* out, __nv_bfloat16* out16, const float* gate,
                                          const float* up, int64_t n) {
    GRID_STRIDE(i, n) {
        const float v = swiglu_value(gate[i], up[i]);
        out[i] = v;
        out16[i] = __float2bfloat16_rn(v);
    }
}

// From gate and up as one [rows, 2·width] GEMM output (the decode step's stacked gate/up
// projection, each row gate | up): out [rows, width] = silu(gate)·up, and out's bf16 rounding into
// out16 when not null (the bf16 GEMM mode's copy, as swiglu_forward_with_bf16).
__device__ __forceinline__ void swiglu_stacked_rows(float* out, __nv_bfloat16* out16,
                                                    const float* gate_up, int64_t rows, int width) {
    GRID_STRIDE(i, rows * width) {
        const int64_t r = i / width, j = i % width;
        const float* row = gate_up + r * 2 * width;
        const float v = swiglu_value(row[j], row[width + j]);
        out[i] = v;
        if (out16) out16[i] = __float2bfloat16_rn(v);
    }
}

CADA_KERNEL void swiglu_forward_stacked(float* out, const float* gate_up, int64_t rows, int width) {
    swiglu_stacked_rows(out, nullptr, gate_up, rows, width);
}

CADA_KERNEL void swiglu_forward_stacked_with_bf16(float* out, __nv_bfloat16* out16,
                                                  const float* gate_up, int64_t rows, int width) {
    swiglu_stacked_rows(out, out16, gate_up, rows, width);
}

// dup = dout·silu(g); dgate = dout·up·σ(g)·(1 + g·(1 − σ(g))).
__device__ __forceinline__ void swiglu_grad(float* dgate, float* dup, int64_t i, float d, float g,
                                            float u) {
    const float s = sigmoidf_(g);
    dup[i] = d * g * s;
    dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
}

CADA_KERNEL void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                 const float* up, int64_t n) {
    GRID_STRIDE(i, n) swiglu_grad(dgate, dup, i, dout[i], gate[i], up[i]);
}

// The same from gate and up saved in bf16 alone (`keep_as_swiglu_input` in the bf16 mode): half
// the bytes read, the f32 math unchanged.
CADA_KERNEL void swiglu_backward_bf16(float* dgate, float* dup, const float* dout,
                                      const __nv_bfloat16* gate, const __nv_bfloat16* up,
                                      int64_t n) {
    GRID_STRIDE(i, n) {
        swiglu_grad(dgate, dup, i, dout[i], __bfloat162float(gate[i]), __bfloat162float(up[i]));
    }
}
