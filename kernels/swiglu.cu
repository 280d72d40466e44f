// SwiGLU: out = silu(gate)·up, flat [n].
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

CADA_KERNEL void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
    GRID_STRIDE(i, n) {
        const float g = gate[i];
        out[i] = g * sigmoidf_(g) * up[i];
    }
}

// dup = dout·silu(g); dgate = dout·up·σ(g)·(1 + g·(1 − σ(g))).
CADA_KERNEL void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                 const float* up, int64_t n) {
    GRID_STRIDE(i, n) {
        const float g = gate[i], u = up[i], d = dout[i];
        const float s = sigmoidf_(g);
        dup[i] = d * g * s;
        dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    }
}
