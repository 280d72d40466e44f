// The f64 reference shared by the attention harnesses (attention_mma_check.cpp,
// attention_wgmma_check.cpp, attention_simt_check.cpp): causal GQA attention and its gradients
// straight from the definitions, the relative error ‖got − want‖ / ‖want‖ (infinite when
// anything is not finite, so NaN never passes), and the inputs' bf16 copies, NaN-poisoned
// outputs and δ the tensor-core harnesses hand their kernels.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace attn_ref {

struct Shape {
    int batch, seq, n_heads, n_kv_heads, head_dim;
};

// The bf16 copies the tensor-core kernels read, made as Cuda::attention_operand makes them
// (round to nearest even).
inline std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
    std::vector<uint16_t> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b[i] = emu::bf16_bits(x[i]);
    return b;
}

// n floats of NaN (all bits set): an output a kernel must overwrite.
inline std::vector<float> nan_vec(size_t n) {
    std::vector<float> x(n);
    std::memset(x.data(), 0xff, n * 4);
    return x;
}

// δ = rowsum(dO∘O) [B, Hq, T] from a kernel's own output, in f32 as attention_backward_delta
// stores it.
inline std::vector<float> delta_of(const Shape& s, const std::vector<float>& dout,
                                   const std::vector<float>& out) {
    std::vector<float> delta((size_t)s.batch * s.n_heads * s.seq);
    for (int b = 0; b < s.batch; ++b)
        for (int h = 0; h < s.n_heads; ++h)
            for (int t = 0; t < s.seq; ++t) {
                const size_t qi = (((size_t)b * s.seq + t) * s.n_heads + h) * s.head_dim;
                double acc = 0;
                for (int d = 0; d < s.head_dim; ++d) acc += (double)dout[qi + d] * out[qi + d];
                delta[((size_t)b * s.n_heads + h) * s.seq + t] = (float)acc;
            }
    return delta;
}

inline double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

struct Reference {
    std::vector<double> out, lse, dq, dk, dv;
};

// Causal GQA attention and its gradients in f64, straight from the definitions.
inline Reference reference(const Shape& s, const std::vector<float>& q, const std::vector<float>& k,
                    const std::vector<float>& v, const std::vector<float>& dout) {
    const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
    const size_t qs = (size_t)s.n_heads * hd, ks = (size_t)s.n_kv_heads * hd;
    const double scale = 1.0 / std::sqrt((double)hd);
    Reference r;
    r.out.assign(q.size(), 0);
    r.dq.assign(q.size(), 0);
    r.dk.assign(k.size(), 0);
    r.dv.assign(v.size(), 0);
    r.lse.assign((size_t)s.batch * s.n_heads * s.seq, 0);
    std::vector<double> p(s.seq), dp(s.seq);
    for (int b = 0; b < s.batch; ++b)
        for (int h = 0; h < s.n_heads; ++h) {
            const int kh = h / group;
            for (int t = 0; t < s.seq; ++t) {
                const size_t qi = ((size_t)b * s.seq + t) * qs + (size_t)h * hd;
                double mx = -INFINITY;
                for (int j = 0; j <= t; ++j) {
                    const size_t ki = ((size_t)b * s.seq + j) * ks + (size_t)kh * hd;
                    double dot = 0;
                    for (int d = 0; d < hd; ++d) dot += (double)q[qi + d] * k[ki + d];
                    p[j] = dot * scale;
                    mx = std::max(mx, p[j]);
                }
                double sum = 0;
                for (int j = 0; j <= t; ++j) sum += std::exp(p[j] - mx);
                r.lse[((size_t)b * s.n_heads + h) * s.seq + t] = mx + std::log(sum);
                double delta = 0;
                for (int j = 0; j <= t; ++j) {
                    const size_t ki = ((size_t)b * s.seq + j) * ks + (size_t)kh * hd;
                    p[j] = std::exp(p[j] - mx) / sum;
                    double dpj = 0;
                    for (int d = 0; d < hd; ++d) {
                        r.out[qi + d] += p[j] * v[ki + d];
                        dpj += (double)dout[qi + d] * v[ki + d];
                    }
                    dp[j] = dpj;
                    delta += p[j] * dpj;
                }
                for (int j = 0; j <= t; ++j) {
                    const size_t ki = ((size_t)b * s.seq + j) * ks + (size_t)kh * hd;
                    const double ds = p[j] * (dp[j] - delta) * scale;
                    for (int d = 0; d < hd; ++d) {
                        r.dq[qi + d] += ds * k[ki + d];
                        r.dk[ki + d] += ds * q[qi + d];
                        r.dv[ki + d] += p[j] * dout[qi + d];
                    }
                }
            }
        }
    return r;
}

// Fresh q, k, v, dO uniform in ±1 for shape `s`, and the reference on them.
struct Inputs {
    std::vector<float> q, k, v, dout;
    Reference want;
};
inline Inputs random_inputs(const Shape& s, std::mt19937_64& rng) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const size_t nq = (size_t)s.batch * s.seq * s.n_heads * s.head_dim;
    const size_t nk = (size_t)s.batch * s.seq * s.n_kv_heads * s.head_dim;
    auto fill = [&](size_t n) {
        std::vector<float> x(n);
        for (auto& e : x) e = u(rng);
        return x;
    };
    Inputs in{fill(nq), fill(nk), fill(nk), fill(nq), {}};
    in.want = reference(s, in.q, in.k, in.v, in.dout);
    return in;
}

inline bool check(const char* what, double err, double tol, bool& all_ok) {
    const bool ok = err <= tol;  // false for NaN
    std::printf("    %-4s %.2e (bound %.0e)%s\n", what, err, tol, ok ? "" : "  FAILED");
    all_ok = all_ok && ok;
    return ok;
}

}  // namespace attn_ref
