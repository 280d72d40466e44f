// Runs the layer kernels that the other harnesses leave out, each file unchanged, in the host
// emulation (cuda_runtime.h): rmsnorm.cu (with the fused add_rmsnorm_forward against its
// composite twin), rope.cu, embedding.cu, swiglu.cu, adamw.cu,
// convert.cu, elementwise.cu and fused_logprob.cu. Each is launched with the grid and block its
// launcher in src/backend/cuda/ computes (grid_rows/row_threads, grid_cols, grid_1d — here with
// the 1-D grid capped lower, so the grid-stride loops go round more than once) and compared with
// an f64 evaluation of the CPU reference's formula: odd sizes, outputs poisoned with NaN before
// the launch, accumulating outputs pre-filled with random values, NaN never passing. The fused
// log-prob is driven chunk by chunk as head.rs drives it, the chunk GEMM done here in f64.
// Fresh random inputs each run (CADA_EMU_SEED to repeat); exit status 1 on any failure.
#define CADA_HOST_EMULATION
#include "cuda_runtime.h"
#include "cuda_bf16.h"
#include "harness.h"
#include "math_constants.h"

#include "../adamw.cu"
#include "../convert.cu"
#include "../elementwise.cu"
#include "../embedding.cu"
#include "../fused_logprob.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"
#include "../swiglu.cu"

#include <cstdio>
#include <cstring>
#include <random>
#include <string>

namespace {

// f32 kernels against f64 references: a few ulps of f32 per element, summed in another order
constexpr double kTolF32 = 2e-6;

bool all_ok = true;

// ‖got − want‖ / ‖want‖ over the elements; any NaN or ±inf in `got` fails.
void check(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
           double tol = kTolF32) {
    double num = 0, den = 0;
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) ++bad;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    const double rel = std::sqrt(num / std::max(den, 1e-300));
    const bool ok = bad == 0 && rel <= tol && got.size() == want.size();
    std::printf("  %-46s rel %.2e (≤ %.0e)%s%s\n", what.c_str(), rel, tol,
                bad ? ", non-finite values" : "", ok ? "" : "  FAILED");
    all_ok = all_ok && ok;
}

// Element by element: |got − want| ≤ abs + rel·|want| everywhere (a norm over many rows can
// hide one row that is wrong by several times its own, small, value).
void check_each(const std::string& what, const std::vector<float>& got,
                const std::vector<double>& want, double abs, double rel) {
    double worst = 0;  // the largest |got − want| / (abs + rel·|want|)
    bool finite = true;
    for (size_t i = 0; i < got.size(); ++i) {
        finite = finite && std::isfinite(got[i]);
        worst = std::max(worst, std::abs(got[i] - want[i]) / (abs + rel * std::abs(want[i])));
    }
    const bool ok = finite && worst <= 1.0 && got.size() == want.size();
    std::printf("  %-46s each ≤ %.0e + %.0e·|ref|: worst at %.2f of it%s%s\n", what.c_str(), abs,
                rel, worst, finite ? "" : ", non-finite values", ok ? "" : "  FAILED");
    all_ok = all_ok && ok;
}

void expect(const std::string& what, bool ok) {
    std::printf("  %-46s %s\n", what.c_str(), ok ? "ok" : "FAILED");
    all_ok = all_ok && ok;
}

std::vector<double> widen(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// The launchers' shapes (src/backend/cuda/mod.rs)
constexpr unsigned kBlock = CADA_BLOCK;
unsigned row_threads(int width) { return (unsigned)std::clamp((width + 31) / 32 * 32, 32, 1024); }
// grid_1d caps at 2^20 blocks; capped at 3 here so every grid-stride loop goes round
dim3 grid_1d(int64_t n) { return {(unsigned)std::clamp<int64_t>((n + kBlock - 1) / kBlock, 1, 3)}; }
std::pair<dim3, int64_t> grid_cols(int cols, int64_t rows, int64_t rows_per_slice = 256) {
    const int64_t slices = std::clamp<int64_t>((rows + rows_per_slice - 1) / rows_per_slice, 1, 65535);
    const int64_t per = std::max<int64_t>((rows + slices - 1) / slices, 1);
    return {dim3{(unsigned)((cols + kBlock - 1) / kBlock), (unsigned)slices, 1}, per};
}

struct Rand {
    std::mt19937_64& rng;
    std::vector<float> normal(size_t n, float scale = 1.f) {
        std::normal_distribution<float> d(0.f, scale);
        std::vector<float> x(n);
        for (auto& v : x) v = d(rng);
        return x;
    }
    std::vector<float> uniform(size_t n, float lo, float hi) {
        std::uniform_real_distribution<float> d(lo, hi);
        std::vector<float> x(n);
        for (auto& v : x) v = d(rng);
        return x;
    }
    int below(int n) { return (int)std::uniform_int_distribution<int>(0, n - 1)(rng); }
};

void rmsnorm(Rand& r, int n, int dim) {
    const float eps = 1e-6f;
    auto x = r.normal((size_t)n * dim, 2.f), w = r.normal(dim), dy = r.normal((size_t)n * dim);
    std::vector<float> out(x.size(), NAN), rstd(n, NAN), dx(x.size(), NAN);
    auto dw = r.normal(dim);  // the kernel accumulates into dw
    const auto dw0 = dw;
    const dim3 rows{(unsigned)n}, threads{row_threads(dim)};
    emu::launch(rows, threads, [&] { rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), dim, eps); });
    emu::launch(rows, threads, [&] {
        rmsnorm_backward_input(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), dim);
    });
    // 64 rows per slice here, so a few slices meet in the atomics
    const auto [cfg, per] = grid_cols(dim, n, 64);
    emu::launch(cfg, dim3{kBlock}, [&] {
        rmsnorm_backward_weight(dw.data(), dy.data(), x.data(), rstd.data(), n, dim, per);
    });
    std::vector<double> o(x.size()), rs(n), dxr(x.size()), dwr(dw0.begin(), dw0.end());
    for (int i = 0; i < n; ++i) {
        double ss = 0, dot = 0;
        for (int c = 0; c < dim; ++c) {
            const size_t k = (size_t)i * dim + c;
            ss += (double)x[k] * x[k];
            dot += (double)x[k] * w[c] * dy[k];
        }
        const double q = 1.0 / std::sqrt(ss / dim + eps);
        rs[i] = q;
        for (int c = 0; c < dim; ++c) {
            const size_t k = (size_t)i * dim + c;
            o[k] = x[k] * q * w[c];
            dxr[k] = q * w[c] * dy[k] - x[k] * q * q * q * dot / dim;
            dwr[c] += dy[k] * x[k] * q;
        }
    }
    const std::string s = " [" + std::to_string(n) + " × " + std::to_string(dim) + "]";
    check("rmsnorm_forward out" + s, out, o);
    check("rmsnorm_forward rstd" + s, rstd, rs);
    check("rmsnorm_backward_input" + s, dx, dxr);
    check("rmsnorm_backward_weight (+= into dw)" + s, dw, dwr);
}

// add_rmsnorm_forward against its composite twin, add_assign_f32 then rmsnorm_forward (itself
// checked against f64 above): the same f32 operations in the same per-thread order, so equal
// to the bit; x must come back as x + delta.
void add_rmsnorm(Rand& r, int n, int dim) {
    const float eps = 1e-6f;
    const auto x0 = r.normal((size_t)n * dim, 2.f), delta = r.normal((size_t)n * dim);
    const auto w = r.normal(dim);
    auto x1 = x0, x2 = x0;
    std::vector<float> out1(x0.size(), NAN), out2(x0.size(), NAN), rstd1(n, NAN), rstd2(n, NAN);
    const dim3 rows{(unsigned)n}, threads{row_threads(dim)};
    const int64_t len = (int64_t)x0.size();
    emu::launch(grid_1d(len), dim3{kBlock}, [&] { add_assign_f32(x1.data(), delta.data(), len); });
    emu::launch(rows, threads, [&] { rmsnorm_forward(out1.data(), rstd1.data(), x1.data(), w.data(), dim, eps); });
    emu::launch(rows, threads, [&] {
        add_rmsnorm_forward(x2.data(), out2.data(), rstd2.data(), delta.data(), w.data(), dim, eps);
    });
    const std::string s = " [" + std::to_string(n) + " × " + std::to_string(dim) + "]";
    const auto bits = [](const std::vector<float>& a, const std::vector<float>& b) {
        return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    expect("add_rmsnorm_forward x = add_assign's" + s, bits(x2, x1));
    expect("add_rmsnorm_forward out = rmsnorm's (bits)" + s, bits(out2, out1));
    expect("add_rmsnorm_forward rstd = rmsnorm's (bits)" + s, bits(rstd2, rstd1));
}

// The bf16 GEMM mode's "_with_bf16" kernels (rmsnorm, add + rmsnorm, swiglu) against their
// f32 kernel followed by f32_to_bf16 (the conversion they replace): both outputs equal to the
// bit, so a GEMM reading the kernel's copy computes what it computed on the converted one.
void with_bf16_copies(Rand& r, int n, int dim) {
    const float eps = 1e-6f;
    const int64_t len = (int64_t)n * dim;
    const auto x0 = r.normal(len, 2.f), delta = r.normal(len), w = r.normal(dim);
    const dim3 rows{(unsigned)n}, threads{row_threads(dim)};
    const auto bits16 = [](const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b) {
        return std::memcmp(a.data(), b.data(), a.size() * sizeof(__nv_bfloat16)) == 0;
    };
    const auto bits = [](const std::vector<float>& a, const std::vector<float>& b) {
        return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    const auto convert = [&](const std::vector<float>& src) {
        std::vector<__nv_bfloat16> dst(src.size(), __nv_bfloat16{0xdead});
        emu::launch(grid_1d((int64_t)src.size() / 4 + 1), dim3{kBlock},
                    [&] { f32_to_bf16(dst.data(), src.data(), (int64_t)src.size()); });
        return dst;
    };
    const std::string s = " [" + std::to_string(n) + " × " + std::to_string(dim) + "]";
    {
        std::vector<float> o1(len, NAN), o2(len, NAN), r1(n, NAN), r2(n, NAN);
        std::vector<__nv_bfloat16> o16(len, __nv_bfloat16{0xdead});
        emu::launch(rows, threads, [&] { rmsnorm_forward(o1.data(), r1.data(), x0.data(), w.data(), dim, eps); });
        emu::launch(rows, threads, [&] {
            rmsnorm_forward_with_bf16(o2.data(), o16.data(), r2.data(), x0.data(), w.data(), dim, eps);
        });
        expect("rmsnorm_forward_with_bf16 = rmsnorm_forward + f32_to_bf16" + s,
               bits(o2, o1) && bits(r2, r1) && bits16(o16, convert(o1)));
    }
    {
        auto x1 = x0, x2 = x0;
        std::vector<float> o1(len, NAN), o2(len, NAN), r1(n, NAN), r2(n, NAN);
        std::vector<__nv_bfloat16> o16(len, __nv_bfloat16{0xdead});
        emu::launch(rows, threads, [&] {
            add_rmsnorm_forward(x1.data(), o1.data(), r1.data(), delta.data(), w.data(), dim, eps);
        });
        emu::launch(rows, threads, [&] {
            add_rmsnorm_forward_with_bf16(x2.data(), o2.data(), o16.data(), r2.data(), delta.data(),
                                          w.data(), dim, eps);
        });
        expect("add_rmsnorm_forward_with_bf16 = add_rmsnorm_forward + f32_to_bf16" + s,
               bits(x2, x1) && bits(o2, o1) && bits(r2, r1) && bits16(o16, convert(o1)));
    }
    {
        const auto g = r.normal(len, 3.f), u = r.normal(len);
        std::vector<float> o1(len, NAN), o2(len, NAN);
        std::vector<__nv_bfloat16> o16(len, __nv_bfloat16{0xdead});
        emu::launch(grid_1d(len), dim3{kBlock}, [&] { swiglu_forward(o1.data(), g.data(), u.data(), len); });
        emu::launch(grid_1d(len), dim3{kBlock},
                    [&] { swiglu_forward_with_bf16(o2.data(), o16.data(), g.data(), u.data(), len); });
        expect("swiglu_forward_with_bf16 = swiglu_forward + f32_to_bf16" + s,
               bits(o2, o1) && bits16(o16, convert(o1)));
        // the stacked gate/up variants, from the rows [gate | up] of one [n, 2·dim] buffer
        std::vector<float> gu((size_t)2 * len);
        for (int64_t i = 0; i < n; ++i)
            for (int j = 0; j < dim; ++j) {
                gu[(size_t)i * 2 * dim + j] = g[(size_t)i * dim + j];
                gu[(size_t)i * 2 * dim + dim + j] = u[(size_t)i * dim + j];
            }
        std::vector<float> o3(len, NAN), o4(len, NAN);
        std::vector<__nv_bfloat16> o16s(len, __nv_bfloat16{0xdead});
        // two blocks, so the grid-stride loop goes round
        emu::launch(dim3{2}, dim3{kBlock}, [&] { swiglu_forward_stacked(o3.data(), gu.data(), n, dim); });
        emu::launch(dim3{2}, dim3{kBlock}, [&] {
            swiglu_forward_stacked_with_bf16(o4.data(), o16s.data(), gu.data(), n, dim);
        });
        expect("swiglu_forward_stacked = swiglu_forward on the split rows" + s, bits(o3, o1));
        expect("swiglu_forward_stacked_with_bf16 = swiglu_forward + f32_to_bf16" + s,
               bits(o4, o1) && bits16(o16s, convert(o1)));
    }
}

// rotary_dim < hd: the dims from rotary_dim on pass through (Phi-4-mini); scale multiplies the
// rotated ones (LongRoPE's attention factor)
void rope(Rand& r, int n, int heads, int hd, int rotary_dim, float scale) {
    const int half = rotary_dim / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) inv_freq[i] = 1.f / std::pow(10000.f, 2.f * i / rotary_dim);
    std::vector<unsigned> pos(n);
    for (auto& p : pos) p = (unsigned)r.below(4096);  // any order: packed sequences, rollouts
    const auto x0 = r.normal((size_t)n * heads * hd);
    auto x = x0;
    const int64_t pairs = (int64_t)n * heads * (hd / 2);
    const RopeDims dims{rotary_dim, scale};
    emu::launch(grid_1d(pairs), dim3{kBlock}, [&] {
        rope_apply(x.data(), pos.data(), inv_freq.data(), n, heads, hd, dims, 1.f);
    });
    std::vector<double> want = widen(x0);  // the pass-through dims
    for (int i = 0; i < n; ++i)
        for (int h = 0; h < heads; ++h)
            for (int j = 0; j < half; ++j) {
                // the CPU's f32 angle, then exact trigonometry
                const double a = (float)pos[i] * inv_freq[j];
                const size_t k = ((size_t)i * heads + h) * hd + j;
                want[k] = scale * (x0[k] * std::cos(a) - x0[k + half] * std::sin(a));
                want[k + half] = scale * (x0[k + half] * std::cos(a) + x0[k] * std::sin(a));
            }
    const std::string s = " [" + std::to_string(n) + " × " + std::to_string(heads) + " × " +
                          std::to_string(hd) + ", rotary " + std::to_string(rotary_dim) +
                          ", scale " + std::to_string(scale) + "]";
    check("rope_apply forward" + s, x, want);
    // the backward applies the transpose, scale·Rᵀ: after the forward, scale² on the rotated
    // dims and the pass-through dims untouched
    emu::launch(grid_1d(pairs), dim3{kBlock}, [&] {
        rope_apply(x.data(), pos.data(), inv_freq.data(), n, heads, hd, dims, -1.f);
    });
    std::vector<double> back = widen(x0);
    for (size_t k = 0; k < back.size(); ++k)
        if ((int)(k % hd) < rotary_dim) back[k] *= (double)scale * scale;
    check("rope_apply backward = transpose of forward" + s, x, back);
}

void embedding(Rand& r, int n, int dim, int vocab) {
    const auto table = r.normal((size_t)vocab * dim);
    std::vector<unsigned> ids(n);
    for (auto& id : ids) id = (unsigned)r.below(vocab / 4 + 1);  // plenty of repeats
    ids[n / 2] = (unsigned)vocab;                                 // past the table
    ids[n - 1] = (unsigned)vocab - 1;
    std::vector<float> out((size_t)n * dim, 0.f);
    const dim3 rows{(unsigned)n}, threads{std::min(row_threads(dim), 256u)};
    emu::launch(rows, threads, [&] { embedding_forward(out.data(), table.data(), ids.data(), dim, vocab); });
    std::vector<float> got, bad_row;
    std::vector<double> want;
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < dim; ++c) {
            const float v = out[(size_t)i * dim + c];
            if (ids[i] >= (unsigned)vocab) {
                bad_row.push_back(v);
                continue;
            }
            got.push_back(v);
            want.push_back(table[(size_t)ids[i] * dim + c]);
        }
    const std::string s = " [" + std::to_string(n) + " ids, " + std::to_string(dim) + "]";
    check("embedding_forward" + s, got, want, 0.0);
    expect("embedding_forward: an id past the table → NaN row",
           std::all_of(bad_row.begin(), bad_row.end(), [](float v) { return std::isnan(v); }));
    auto dtable = r.normal((size_t)vocab * dim);
    std::vector<double> dref(dtable.begin(), dtable.end());
    const auto dy = r.normal((size_t)n * dim);
    emu::launch(rows, threads, [&] { embedding_backward(dtable.data(), dy.data(), ids.data(), dim, vocab); });
    for (int i = 0; i < n; ++i)
        if (ids[i] < (unsigned)vocab)
            for (int c = 0; c < dim; ++c) dref[(size_t)ids[i] * dim + c] += dy[(size_t)i * dim + c];
    check("embedding_backward (+= into dtable)" + s, dtable, dref);
}

void swiglu(Rand& r, int64_t n) {
    const auto g = r.normal(n, 3.f), u = r.normal(n), dy = r.normal(n);
    std::vector<float> out(n, NAN), dg(n, NAN), du(n, NAN), dg16(n, NAN), du16(n, NAN);
    std::vector<__nv_bfloat16> g16(n), u16(n);
    for (int64_t i = 0; i < n; ++i) g16[i] = __float2bfloat16_rn(g[i]), u16[i] = __float2bfloat16_rn(u[i]);
    emu::launch(grid_1d(n), dim3{kBlock}, [&] { swiglu_forward(out.data(), g.data(), u.data(), n); });
    emu::launch(grid_1d(n), dim3{kBlock}, [&] { swiglu_backward(dg.data(), du.data(), dy.data(), g.data(), u.data(), n); });
    emu::launch(grid_1d(n), dim3{kBlock}, [&] {
        swiglu_backward_bf16(dg16.data(), du16.data(), dy.data(), g16.data(), u16.data(), n);
    });
    // the bf16 backward is the f32 one on the bf16-rounded inputs
    auto ref = [&](bool rounded, std::vector<double>& o, std::vector<double>& dgr, std::vector<double>& dur) {
        o.resize(n), dgr.resize(n), dur.resize(n);
        for (int64_t i = 0; i < n; ++i) {
            const double gi = rounded ? __bfloat162float(g16[i]) : g[i];
            const double ui = rounded ? __bfloat162float(u16[i]) : u[i];
            const double s = 1.0 / (1.0 + std::exp(-gi));
            o[i] = gi * s * ui;
            dur[i] = dy[i] * gi * s;
            dgr[i] = dy[i] * ui * s * (1.0 + gi * (1.0 - s));
        }
    };
    std::vector<double> o, dgr, dur;
    ref(false, o, dgr, dur);
    const std::string s = " [" + std::to_string(n) + "]";
    check("swiglu_forward" + s, out, o);
    check("swiglu_backward dgate" + s, dg, dgr);
    check("swiglu_backward dup" + s, du, dur);
    ref(true, o, dgr, dur);
    check("swiglu_backward_bf16 dgate" + s, dg16, dgr);
    check("swiglu_backward_bf16 dup" + s, du16, dur);
}

void adamw(Rand& r, int64_t n) {
    const float lr = 3e-4f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    auto p = r.normal(n), m = r.normal(n, 0.01f), v = r.uniform(n, 0.f, 1e-4f);
    const auto g = r.normal(n, 0.1f);
    std::vector<double> pr(n), mr(n), vr(n);
    for (int step = 1; step <= 3; ++step) {
        // the host's f32 bias corrections (powi), as src/backend/cuda passes them
        float pw1 = 1.f, pw2 = 1.f;
        for (int i = 0; i < step; ++i) pw1 *= b1, pw2 *= b2;
        const float bc1 = 1.f - pw1, bc2 = 1.f - pw2;
        for (int64_t i = 0; i < n; ++i) {  // src/backend/cpu/elementwise.rs adamw_step in f64
            double pi = p[i];
            pi -= (double)lr * wd * pi;
            mr[i] = (double)b1 * m[i] + (1.0 - b1) * g[i];
            vr[i] = (double)b2 * v[i] + (1.0 - b2) * (double)g[i] * g[i];
            pr[i] = pi - lr * (mr[i] / bc1) / (std::sqrt(vr[i] / bc2) + eps);
        }
        emu::launch(grid_1d(n), dim3{kBlock}, [&] {
            adamw_step(p.data(), g.data(), m.data(), v.data(), lr, b1, b2, eps, wd, bc1, bc2, n);
        });
        const std::string s = " step " + std::to_string(step) + " [" + std::to_string(n) + "]";
        check("adamw_step param" + s, p, pr);
        check("adamw_step m" + s, m, mr);
        check("adamw_step v" + s, v, vr);
    }
}

// f32_to_bf16 at an aligned offset (the float4 path) and a misaligned one (the scalar path),
// bit for bit against round-to-nearest-even, with ties, NaN, ±inf, overflow and denormals.
void convert(Rand& r, int64_t n) {
    std::vector<float> src(n + 1);
    std::uniform_int_distribution<uint32_t> bits;
    for (int64_t i = 0; i <= n; ++i) {
        uint32_t u = bits(r.rng);
        if (i % 3 == 0) u = (u & 0xffff0000u) | 0x8000u;  // an exact tie
        if (i % 5 == 0) u = (u & 0x807fffffu) | (0x3f000000u + ((u >> 8) & 0x07000000u));  // a normal
        std::memcpy(&src[i], &u, 4);
    }
    const float specials[] = {NAN, INFINITY, -INFINITY, 3.4e38f, -3.3961e38f, 1e-40f, -0.f, 0.f};
    for (size_t k = 0; k < sizeof specials / sizeof specials[0]; ++k) src[7 * k + 1] = specials[k];
    for (int offset : {0, 1}) {
        std::vector<uint16_t> dst(n + 1, 0xdeadu);
        const int64_t len = n - offset;
        emu::launch(grid_1d(len / 4 + 1), dim3{kBlock}, [&] {
            f32_to_bf16(reinterpret_cast<__nv_bfloat16*>(dst.data()) + offset, src.data() + offset, len);
        });
        int64_t wrong = 0;
        for (int64_t i = 0; i < len; ++i) {
            const uint16_t want = emu::bf16_bits(src[offset + i]), got = dst[offset + i];
            const bool both_nan = std::isnan(src[offset + i]) && (got & 0x7fffu) > 0x7f80u;
            wrong += got != want && !both_nan;
        }
        const bool untouched = dst[n] == 0xdeadu && (offset == 0 || dst[0] == 0xdeadu);
        expect("f32_to_bf16 " + std::string(offset ? "misaligned (scalar)" : "aligned (float4)") +
                   ", bit-exact RNE, nothing else written [" + std::to_string(len) + "]",
               wrong == 0 && untouched);
    }
}

// The rounding itself, against bit patterns written out by hand (the check above compares with
// the emulation's own cvt.rn.bf16.f32 model; this pins that model down): ties to even both
// ways, just above a tie, the largest finite f32 rounding to inf, denormals, signed zero.
void convert_known_patterns() {
    const std::pair<uint32_t, uint16_t> cases[] = {
        {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81},
        {0xbf818000u, 0xbf82}, {0x7f7fffffu, 0x7f80}, {0xff7fffffu, 0xff80}, {0x7f800000u, 0x7f80},
        {0xff800000u, 0xff80}, {0x00010000u, 0x0001}, {0x00008000u, 0x0000}, {0x00018000u, 0x0002},
        {0x80000000u, 0x8000}, {0x3f7fffffu, 0x3f80}, {0x477fe000u, 0x4780}, {0x477f7fffu, 0x477f},
    };
    const size_t k = sizeof cases / sizeof cases[0];
    for (int offset : {0, 1}) {  // float4 path and scalar path
        std::vector<float> src(k + offset + 2, 0.f);
        for (size_t i = 0; i < k; ++i) std::memcpy(&src[offset + i], &cases[i].first, 4);
        std::vector<uint16_t> dst(src.size(), 0xdeadu);
        emu::launch(dim3{1}, dim3{kBlock}, [&] {
            f32_to_bf16(reinterpret_cast<__nv_bfloat16*>(dst.data()) + offset, src.data() + offset, (int64_t)k);
        });
        int wrong = 0;
        for (size_t i = 0; i < k; ++i) {
            if (dst[offset + i] != cases[i].second) {
                ++wrong;
                std::printf("    f32 %08x → bf16 %04x, want %04x\n", cases[i].first, dst[offset + i], cases[i].second);
            }
        }
        expect(std::string("f32_to_bf16 hand-written patterns, ") + (offset ? "scalar" : "float4") + " path", wrong == 0);
    }
}

void elementwise(Rand& r, int64_t n) {
    const std::string s = " [" + std::to_string(n) + "]";
    auto y = r.normal(n);
    const auto x = r.normal(n);
    emu::launch(grid_1d(n), dim3{kBlock}, [&] { fill_f32(y.data(), 0.375f, n); });
    expect("fill_f32" + s, std::all_of(y.begin(), y.end(), [](float v) { return v == 0.375f; }));
    y = r.normal(n);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = (double)((y[i] + x[i]) * -1.5f);
    emu::launch(grid_1d(n), dim3{kBlock}, [&] { add_assign_f32(y.data(), x.data(), n); });
    emu::launch(grid_1d(n), dim3{kBlock}, [&] { scale_f32(y.data(), -1.5f, n); });
    check("add_assign_f32 then scale_f32" + s, y, want, 0.0);

    // the host's reduction: grid_1d capped at 1024 blocks, partials summed in f64
    const dim3 g = grid_1d(n);
    std::vector<float> partials(g.x, NAN);
    emu::launch(g, dim3{kBlock}, [&] { sum_squares_partial(x.data(), n, partials.data()); });
    double got = 0, ref = 0;
    for (float p : partials) got += p;
    for (float v : x) ref += (double)v * v;
    check("sum_squares_partial (summed on the host)" + s, {(float)got}, {ref});

    for (int kind = 0; kind < 3; ++kind) {
        auto z = r.normal(n);
        const int64_t at = r.below((int)n);
        if (kind == 1) z[at] = NAN;
        if (kind == 2) z[at] = -INFINITY;
        unsigned flag = 0;
        emu::launch(grid_1d(n), dim3{kBlock}, [&] { any_nonfinite(z.data(), n, &flag); });
        expect(std::string("any_nonfinite ") + (kind == 0 ? "finite → 0" : kind == 1 ? "one NaN → 1" : "one -inf → 1") + s,
               flag == (kind == 0 ? 0u : 1u));
    }

    const int rows = 301, cols = 77;
    auto out = r.normal((size_t)rows * cols);
    const auto bias = r.normal(cols), dout = r.normal((size_t)rows * cols);
    std::vector<double> ob(out.size());
    for (size_t i = 0; i < out.size(); ++i) ob[i] = (double)(out[i] + bias[i % cols]);
    emu::launch(grid_1d((int64_t)rows * cols), dim3{kBlock}, [&] { add_bias_rows(out.data(), bias.data(), rows, cols); });
    check("add_bias_rows [301 × 77]", out, ob, 0.0);
    auto dbias = r.normal(cols);
    std::vector<double> db(dbias.begin(), dbias.end());
    for (int i = 0; i < rows; ++i)
        for (int c = 0; c < cols; ++c) db[c] += dout[(size_t)i * cols + c];
    const auto [cfg, per] = grid_cols(cols, rows, 64);
    emu::launch(cfg, dim3{kBlock}, [&] { bias_grad_cols(dbias.data(), dout.data(), rows, cols, per); });
    check("bias_grad_cols (+= into dbias) [301 × 77]", dbias, db);
}

// The fused log-prob head as head.rs drives it: state init, one chunk update per vocabulary
// chunk (the GEMM here in f64, rounded to f32 as cuBLAS writes it), finish; then the backward's
// in-place chunk gradient. Against an f64 log-softmax over the whole (f32) logit row.
void fused_logprob(Rand& r, int n, int dim, int vocab, int chunk, float temperature, float logit_scale,
                   bool with_neg_inf = false) {
    const auto h = r.normal((size_t)n * dim), w = r.normal((size_t)vocab * dim, logit_scale / std::sqrt((float)dim));
    std::vector<unsigned> targets(n);
    for (auto& t : targets) t = (unsigned)r.below(vocab);
    targets[0] = 0, targets[1] = (unsigned)vocab - 1, targets[2] = (unsigned)chunk;  // chunk edges
    std::vector<float> z_full((size_t)n * vocab);  // f32 logits, as the GEMM writes them
    for (int i = 0; i < n; ++i)
        for (int v = 0; v < vocab; ++v) {
            double acc = 0;
            for (int k = 0; k < dim; ++k) acc += (double)h[(size_t)i * dim + k] * w[(size_t)v * dim + k];
            z_full[(size_t)i * vocab + v] = (float)acc;
        }
    // a −inf logit (a masked vocabulary entry) must add nothing, not NaN
    if (with_neg_inf)
        for (int i = 0; i < n; ++i)
            if ((int)targets[i] != vocab / 2) z_full[(size_t)i * vocab + vocab / 2] = -INFINITY;
    const float inv_t = 1.f / temperature;
    std::vector<float> m(n, NAN), s0(n, NAN), s1(n, NAN), zt(n, NAN);
    emu::launch(grid_1d(n), dim3{kBlock}, [&] { logprob_state_init(m.data(), s0.data(), s1.data(), zt.data(), n); });
    std::vector<float> z((size_t)n * chunk);
    auto chunk_logits = [&](int c0, int c) {
        std::fill(z.begin(), z.end(), NAN);  // past row·c, nothing may be read
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < c; ++j) z[(size_t)i * c + j] = z_full[(size_t)i * vocab + c0 + j];
    };
    for (int c0 = 0; c0 < vocab; c0 += chunk) {
        const int c = std::min(chunk, vocab - c0);
        chunk_logits(c0, c);
        emu::launch(dim3{(unsigned)n}, dim3{std::min(row_threads(c), 256u)}, [&] {
            logprob_chunk_update(z.data(), c, c0, targets.data(), inv_t, m.data(), s0.data(), s1.data(), zt.data());
        });
    }
    std::vector<float> logp(n, NAN), ent(n, NAN), lse(n, NAN);
    emu::launch(grid_1d(n), dim3{kBlock}, [&] {
        logprob_finish(logp.data(), ent.data(), lse.data(), m.data(), s0.data(), s1.data(), zt.data(), n);
    });
    std::vector<double> lr(n), er(n), lser(n), dlogp(n);
    const auto dl = r.normal(n);
    for (int i = 0; i < n; ++i) {
        const float* zi = &z_full[(size_t)i * vocab];
        double mx = -INFINITY, s = 0, sz = 0;
        for (int v = 0; v < vocab; ++v) mx = std::max(mx, (double)zi[v] * inv_t);
        for (int v = 0; v < vocab; ++v) {
            const double x = (double)zi[v] * inv_t, e = std::exp(x - mx);
            s += e, sz += e > 0 ? e * x : 0.0;
        }
        lser[i] = mx + std::log(s);
        lr[i] = (double)zi[targets[i]] * inv_t - lser[i];
        er[i] = lser[i] - sz / s;
    }
    const std::string s = " [" + std::to_string(n) + " × " + std::to_string(vocab) + ", chunk " +
                          std::to_string(chunk) + ", T " + std::to_string(temperature).substr(0, 4) +
                          ", scale " + std::to_string((int)logit_scale) + "]";
    // f32 running sums over the vocabulary. The entropy is taken about the max: ≤ ~2.5e-6 on the
    // peaked rows of scale 60 (log s0 with s0 near 1), where lse − E[z] gave 6.6e-5.
    check("logprob lse" + s, lse, lser, 1e-6);
    check("logprob logp" + s, logp, lr, 1e-5);
    // The whole-vector relative error is ill-posed when every row is peaked (scale 60 can draw
    // 7 rows with entropies ~1e-4: f32 rounding of ~60-sized terms is then 1e-4 of them, seed
    // 51043760328062); the row-by-row bound, absolute floor included, is the criterion there.
    double rms = 0;
    for (double e : er) rms += e * e;
    rms = std::sqrt(rms / er.size());
    if (rms >= 1e-2)
        check("logprob entropy" + s, ent, er, 1e-5);
    else
        std::printf("  logprob entropy%s: RMS entropy %.1e, every row peaked: the row-by-row bound "
                    "below is the check\n",
                    s.c_str(), rms);
    check_each("logprob entropy, row by row" + s, ent, er, 1e-6, 1e-5);
    expect("logprob logp ≤ 0" + s, std::all_of(logp.begin(), logp.end(), [](float v) { return v <= 0.f; }));

    // backward: g = dlogp·(onehot − softmax(z/T))/T per chunk, in place on the logits
    // and the bf16 mode's variant, which must write exactly bf16(f32 g)
    std::vector<float> g_all((size_t)n * vocab);
    std::vector<double> g_ref((size_t)n * vocab);
    int64_t bf16_wrong = 0;
    for (int c0 = 0; c0 < vocab; c0 += chunk) {
        const int c = std::min(chunk, vocab - c0);
        chunk_logits(c0, c);
        std::vector<__nv_bfloat16> g16((size_t)n * chunk + 1, __nv_bfloat16{0xdead});
        emu::launch(grid_1d((int64_t)n * c), dim3{kBlock}, [&] {
            logprob_chunk_grad_bf16(g16.data(), z.data(), n, c, c0, targets.data(), lse.data(), dl.data(), inv_t);
        });
        emu::launch(grid_1d((int64_t)n * c), dim3{kBlock}, [&] {
            logprob_chunk_grad(z.data(), n, c, c0, targets.data(), lse.data(), dl.data(), inv_t);
        });
        for (size_t i = 0; i < (size_t)n * c; ++i) bf16_wrong += g16[i].bits != emu::bf16_bits(z[i]);
        for (size_t i = (size_t)n * c; i < g16.size(); ++i) bf16_wrong += g16[i].bits != 0xdead;
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < c; ++j) g_all[(size_t)i * vocab + c0 + j] = z[(size_t)i * c + j];
    }
    for (int i = 0; i < n; ++i)
        for (int v = 0; v < vocab; ++v) {
            const double p = std::exp((double)z_full[(size_t)i * vocab + v] * inv_t - lser[i]);
            g_ref[(size_t)i * vocab + v] = dl[i] * ((v == (int)targets[i]) - p) * inv_t;
        }
    check("logprob_chunk_grad" + s, g_all, g_ref, 1e-5);
    expect("logprob_chunk_grad_bf16 = bf16(f32 g), nothing past rows·c" + s, bf16_wrong == 0);
}

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("the layer kernels", argc, argv);
    Rand r{rng};
    // odd sizes; 896 is Qwen2.5-0.5B's width (896 threads a row), 576 SmolLM2's
    rmsnorm(r, 13, quick ? 77 : 896);
    if (!quick) rmsnorm(r, 150, 577);
    add_rmsnorm(r, 5, quick ? 77 : 576);
    with_bf16_copies(r, 7, quick ? 77 : 1601);
    if (!quick) add_rmsnorm(r, 64, 1601);  // more columns than threads: each thread takes two
    rope(r, 11, 3, 64, 64, 1.f);
    rope(r, 7, 3, 64, 40, 1.19f);
    if (!quick) rope(r, 5, 2, 128, 128, 1.f);
    if (!quick) rope(r, 5, 2, 128, 96, 1.19f);
    embedding(r, 29, quick ? 33 : 576, 50);
    swiglu(r, quick ? 1001 : 5003);
    adamw(r, quick ? 999 : 4097);
    convert(r, quick ? 1003 : 7001);
    convert_known_patterns();
    elementwise(r, quick ? 1001 : 9001);
    fused_logprob(r, 9, 24, quick ? 300 : 1000, 256, 0.7f, 4.f, /*with_neg_inf=*/true);
    if (!quick) fused_logprob(r, 7, 16, 700, 256, 1.f, 60.f);  // logits far from 0: the rescales
    std::printf(all_ok ? "layer kernels emulation: all checks passed\n"
                       : "layer kernels emulation: FAILED\n");
    return all_ok ? 0 : 1;
}
