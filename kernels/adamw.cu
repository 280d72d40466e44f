// AdamW with decoupled weight decay (PyTorch order: decay, moments, bias-corrected step).
// bc1 = 1 − β1^step and bc2 = 1 − β2^step come from the host (same f32 powi as the CPU).
#include "common.cuh"

CADA_KERNEL void adamw_step(float* param, const float* grad, float* m, float* v, float lr,
                            float beta1, float beta2, float eps, float weight_decay, float bc1,
                            float bc2, int64_t n) {
    GRID_STRIDE(i, n) {
        const float g = grad[i];
        float p = param[i];
        p -= lr * weight_decay * p;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        p -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        param[i] = p;
    }
}
