// What the decode-attention harnesses share: bf16 copies of a cache, and the error of a
// kernel's output against f64 attention of each sequence's query over its cache slot
// (positions 0..=pos[b]; a position past the capacity must have given a NaN row).
#pragma once
#include "cuda_bf16.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace decode_ref {

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& x) {
    std::vector<__nv_bfloat16> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = __float2bfloat16_rn(x[i]);
    return out;
}

inline std::vector<float> widen(const std::vector<__nv_bfloat16>& x) {
    std::vector<float> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = __bfloat162float(x[i]);
    return out;
}

inline bool same_bits(const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (a[i].bits != b[i].bits) return false;
    return true;
}

struct Shape {
    int batch, capacity, n_heads, n_kv_heads, hd;
};

// ‖got − ref‖ / ‖ref‖ over the rows in range (infinite when any of them is not finite);
// `refused_nan` says whether every row past the capacity is all NaN.
inline double error_over(const std::vector<float>& got, const std::vector<float>& q,
                         const std::vector<float>& kc, const std::vector<float>& vc,
                         const std::vector<unsigned>& pos, Shape s, bool& refused_nan) {
    const int kvd = s.n_kv_heads * s.hd;
    double num = 0, den = 0;
    refused_nan = true;
    for (int b = 0; b < s.batch; ++b)
        for (int h = 0; h < s.n_heads; ++h) {
            const int kh = h / (s.n_heads / s.n_kv_heads);
            const float* row = &got[((size_t)b * s.n_heads + h) * s.hd];
            if (pos[b] >= (unsigned)s.capacity) {
                for (int d = 0; d < s.hd; ++d) refused_nan = refused_nan && std::isnan(row[d]);
                continue;
            }
            const int len = (int)pos[b] + 1;
            std::vector<double> sc(len);
            double mx = -INFINITY;
            for (int j = 0; j < len; ++j) {
                double dot = 0;
                for (int d = 0; d < s.hd; ++d)
                    dot += (double)q[((size_t)b * s.n_heads + h) * s.hd + d] *
                           kc[((size_t)b * s.capacity + j) * kvd + (size_t)kh * s.hd + d];
                sc[j] = dot * (1.f / std::sqrt((float)s.hd));  // the kernels' f32 scale
                mx = std::max(mx, sc[j]);
            }
            double sum = 0;
            for (int j = 0; j < len; ++j) sum += std::exp(sc[j] - mx);
            for (int d = 0; d < s.hd; ++d) {
                double o = 0;
                for (int j = 0; j < len; ++j)
                    o += std::exp(sc[j] - mx) / sum *
                         vc[((size_t)b * s.capacity + j) * kvd + (size_t)kh * s.hd + d];
                if (!std::isfinite(row[d])) num = INFINITY;
                num += (row[d] - o) * (row[d] - o);
                den += o * o;
            }
        }
    return std::sqrt(num / den);
}

}  // namespace decode_ref
