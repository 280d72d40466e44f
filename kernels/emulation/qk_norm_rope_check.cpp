// Runs qk_norm_rope.cu unchanged in the host emulation against its composite twin, the kernels
// it fuses (themselves checked against f64 in layer_ops_check.cpp), each launched as its
// launcher in src/backend/cuda/ launches it:
//   forward:  rmsnorm_forward over the head rows of q and of k, then rope_apply on each;
//   backward: rope_apply(−1) on each gradient, then rmsnorm_backward_input.
// Every output must be bit-equal (same sums in the same per-thread order, same products),
// outputs poisoned with NaN before the launch, grids with more than one head of k per token and
// odd token counts, a head dim that is not a multiple of 32 and a partial, scaled rotary.
// Fresh random inputs each run (CADA_EMU_SEED to repeat); exit status 1 on any failure.
#define CADA_HOST_EMULATION
#include "cuda_runtime.h"
#include "harness.h"

#include "../qk_norm_rope.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

bool all_ok = true;

void expect(const std::string& what, bool ok) {
    std::printf("  %-62s %s\n", what.c_str(), ok ? "ok" : "FAILED");
    all_ok = all_ok && ok;
}

// bit-equal, and no NaN (a poisoned element left unwritten is NaN on both sides only if the
// composite also skipped it, so NaN fails outright)
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::isnan(a[i]) || std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return false;
    return true;
}

// the launchers' shapes (src/backend/cuda/mod.rs)
constexpr unsigned kBlock = CADA_BLOCK;
unsigned row_threads(int width) { return (unsigned)std::clamp((width + 31) / 32 * 32, 32, 1024); }
dim3 grid_1d(int64_t n) { return {(unsigned)std::clamp<int64_t>((n + kBlock - 1) / kBlock, 1, 3)}; }

std::vector<float> normal(std::mt19937_64& rng, size_t n, float scale = 1.f) {
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> x(n);
    for (auto& v : x) v = d(rng);
    return x;
}

void qk_case(std::mt19937_64& rng, int tokens, int hq, int hkv, int hd, int rotary_dim, float scale) {
    const float eps = 1e-6f;
    const int64_t nq = (int64_t)tokens * hq, nk = (int64_t)tokens * hkv;
    const auto q_raw = normal(rng, nq * hd, 2.f), k_raw = normal(rng, nk * hd, 2.f);
    const auto q_norm = normal(rng, hd), k_norm = normal(rng, hd);
    std::vector<float> inv_freq(rotary_dim / 2);
    for (int i = 0; i < rotary_dim / 2; ++i)
        inv_freq[i] = 1.f / std::pow(1e6f, 2.f * i / rotary_dim);
    std::vector<unsigned> pos(tokens);
    for (auto& p : pos) p = (unsigned)(rng() % 40000);
    const RopeDims r{rotary_dim, scale};
    const dim3 threads{row_threads(hd)};
    const std::string s = " [" + std::to_string(tokens) + " tokens, " + std::to_string(hq) + "/" +
                          std::to_string(hkv) + " heads × " + std::to_string(hd) + ", rotary " +
                          std::to_string(rotary_dim) + "]";

    // forward, composite
    std::vector<float> q1(nq * hd, NAN), k1(nk * hd, NAN), rq1(nq, NAN), rk1(nk, NAN);
    emu::launch(dim3{(unsigned)nq}, threads, [&] {
        rmsnorm_forward(q1.data(), rq1.data(), q_raw.data(), q_norm.data(), hd, eps);
    });
    emu::launch(dim3{(unsigned)nk}, threads, [&] {
        rmsnorm_forward(k1.data(), rk1.data(), k_raw.data(), k_norm.data(), hd, eps);
    });
    emu::launch(grid_1d(nq * hd / 2), dim3{kBlock}, [&] {
        rope_apply(q1.data(), pos.data(), inv_freq.data(), tokens, hq, hd, r, 1.f);
    });
    emu::launch(grid_1d(nk * hd / 2), dim3{kBlock}, [&] {
        rope_apply(k1.data(), pos.data(), inv_freq.data(), tokens, hkv, hd, r, 1.f);
    });
    // forward, fused
    std::vector<float> q2(nq * hd, NAN), k2(nk * hd, NAN), rq2(nq, NAN), rk2(nk, NAN);
    emu::launch(dim3{(unsigned)tokens, (unsigned)(hq + hkv)}, threads, [&] {
        qk_norm_rope_forward(q2.data(), k2.data(), rq2.data(), rk2.data(), q_raw.data(),
                             k_raw.data(), q_norm.data(), k_norm.data(), pos.data(),
                             inv_freq.data(), hq, hkv, hd, eps, r);
    });
    expect("qk_norm_rope_forward q = rmsnorm + rope_apply (bits)" + s, same_bits(q2, q1));
    expect("qk_norm_rope_forward k = rmsnorm + rope_apply (bits)" + s, same_bits(k2, k1));
    expect("qk_norm_rope_forward 1/rms of q and k (bits)" + s,
           same_bits(rq2, rq1) && same_bits(rk2, rk1));

    // backward, composite (rope_apply turns the gradient in place)
    const auto dq0 = normal(rng, nq * hd), dk0 = normal(rng, nk * hd);
    auto dq1 = dq0, dk1 = dk0;
    std::vector<float> dqr1(nq * hd, NAN), dkr1(nk * hd, NAN);
    emu::launch(grid_1d(nq * hd / 2), dim3{kBlock}, [&] {
        rope_apply(dq1.data(), pos.data(), inv_freq.data(), tokens, hq, hd, r, -1.f);
    });
    emu::launch(grid_1d(nk * hd / 2), dim3{kBlock}, [&] {
        rope_apply(dk1.data(), pos.data(), inv_freq.data(), tokens, hkv, hd, r, -1.f);
    });
    emu::launch(dim3{(unsigned)nq}, threads, [&] {
        rmsnorm_backward_input(dqr1.data(), dq1.data(), q_raw.data(), q_norm.data(), rq1.data(), hd);
    });
    emu::launch(dim3{(unsigned)nk}, threads, [&] {
        rmsnorm_backward_input(dkr1.data(), dk1.data(), k_raw.data(), k_norm.data(), rk1.data(), hd);
    });
    // backward, fused
    auto dq2 = dq0, dk2 = dk0;
    std::vector<float> dqr2(nq * hd, NAN), dkr2(nk * hd, NAN);
    emu::launch(dim3{(unsigned)tokens, (unsigned)(hq + hkv)}, threads, [&] {
        qk_norm_rope_backward_input(dqr2.data(), dkr2.data(), dq2.data(), dk2.data(), q_raw.data(),
                                    k_raw.data(), q_norm.data(), k_norm.data(), rq1.data(),
                                    rk1.data(), pos.data(), inv_freq.data(), hq, hkv, hd, r);
    });
    expect("qk_norm_rope_backward_input dq, dk turned back = rope_apply(-1) (bits)" + s,
           same_bits(dq2, dq1) && same_bits(dk2, dk1));
    expect("qk_norm_rope_backward_input d(q_raw) = rmsnorm_backward_input (bits)" + s,
           same_bits(dqr2, dqr1));
    expect("qk_norm_rope_backward_input d(k_raw) = rmsnorm_backward_input (bits)" + s,
           same_bits(dkr2, dkr1));
}

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("qk_norm_rope.cu", argc, argv);
    // Qwen3's head dim 128 (16/8 heads in Qwen3-0.6B), GQA 3:1, one k head per token, a head
    // dim that is not a multiple of 32 (96 threads, 36 pairs), Phi-4-style partial rotary
    qk_case(rng, 5, 4, 2, 128, 128, 1.f);
    qk_case(rng, 7, 3, 1, 72, 72, 1.f);
    if (!quick) {
        qk_case(rng, 13, 16, 8, 128, 128, 1.f);
        qk_case(rng, 3, 6, 2, 128, 96, 1.19f);
    }
    std::printf(all_ok ? "qk_norm_rope emulation: all checks passed\n"
                       : "qk_norm_rope emulation: FAILED\n");
    return all_ok ? 0 : 1;
}
