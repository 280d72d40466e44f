// Runs kernels/decode_attention.cu, unchanged, in the host emulation (cuda_runtime.h) with the
// launch configurations of src/backend/cuda/attention.rs: kv_cache_write of one new token per
// sequence, then decode_attention over each slot's positions 0..=positions[b] (sequences at
// different lengths, GQA, head dims not a multiple of 32), against f64 attention of that query
// over the cache; a position past the capacity must leave the cache untouched and give a NaN
// row; and decode_rope_cache_write against rope_apply + kv_cache_write, bit for bit (Qwen3's
// decode_qk_norm_rope_cache_write_stacked against rmsnorm_forward over each head, then that). The bf16
// cache's kernels (`_bf16_kv`): their writes are the RNE rounding of the f32 kernels' values,
// and the attention over them is checked against f64 attention over the same bf16 values. Fresh
// random inputs each run (CADA_EMU_SEED to repeat). Exit status 1 on any failure.
#define CADA_HOST_EMULATION
#include "cuda_runtime.h"
#include "decode_reference.h"
#include "harness.h"
#include "math_constants.h"

#include "../decode_attention.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <tuple>

namespace {

constexpr double kTol = 1e-5;  // f32 online softmax against f64

using decode_ref::same_bits;
using decode_ref::to_bf16;
using decode_ref::widen;

bool run_case(std::mt19937_64& rng, int batch, int capacity, int n_heads, int n_kv_heads,
              int hd) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int kvd = n_kv_heads * hd, qd = n_heads * hd;
    std::vector<float> kc((size_t)batch * capacity * kvd), vc(kc.size());
    for (auto& x : kc) x = u(rng);
    for (auto& x : vc) x = u(rng);
    std::vector<unsigned> pos(batch);
    for (int b = 0; b < batch; ++b) pos[b] = (unsigned)((b * 37 + 5) % capacity);
    pos[0] = 0;                            // a sequence's first token
    if (batch > 2) pos[1] = (unsigned)capacity - 1;  // a full slot: every warp's later chunks
    pos[batch - 1] = (unsigned)capacity;   // past the slot: refused
    std::vector<float> k((size_t)batch * kvd), v(k.size()), q((size_t)batch * qd);
    for (auto& x : k) x = u(rng);
    for (auto& x : v) x = u(rng);
    for (auto& x : q) x = u(rng);
    const DecodeDims dims{batch, capacity, n_heads, n_kv_heads, hd};
    const auto kc0 = kc, vc0 = vc;
    // kv_cache_write: grid_1d(batch·kvd) = ⌈n / 256⌉ blocks of 256 threads
    const unsigned blocks = (unsigned)std::max<size_t>(1, ((size_t)batch * kvd + 255) / 256);
    emu::launch(dim3{blocks, 1, 1}, dim3{256, 1, 1}, [&] {
        kv_cache_write(kc.data(), vc.data(), k.data(), v.data(), pos.data(), dims);
    });
    std::vector<float> out((size_t)batch * qd, 12345.f);
    const float scale = 1.f / std::sqrt((float)hd);
    emu::launch(dim3{(unsigned)n_heads, (unsigned)batch, 1}, dim3{32 * DEC_WARPS, 1, 1}, [&] {
        decode_attention(out.data(), q.data(), kc.data(), vc.data(), pos.data(), dims, scale);
    });

    // the bf16 GEMM mode's twin: the same f32 output to the bit and its RNE rounding
    std::vector<float> out2(out.size(), 54321.f);
    std::vector<__nv_bfloat16> out16(out.size(), __nv_bfloat16{0xdead});
    emu::launch(dim3{(unsigned)n_heads, (unsigned)batch, 1}, dim3{32 * DEC_WARPS, 1, 1}, [&] {
        decode_attention_with_bf16(out2.data(), out16.data(), q.data(), kc.data(), vc.data(),
                                   pos.data(), dims, scale);
    });
    bool twin_ok = std::memcmp(out2.data(), out.data(), out.size() * sizeof(float)) == 0;
    for (size_t i = 0; i < out.size(); ++i)
        twin_ok = twin_ok && out16[i].bits == __float2bfloat16_rn(out[i]).bits;
    std::printf("  decode_attention_with_bf16: output and its bf16 copy as decode_attention + RNE: %s\n",
                twin_ok ? "ok" : "FAILED");

    // the lane-per-key kernel and its bf16 twin, on the same cache
    std::vector<float> lane_out(out.size(), 12345.f), lane_out2(out.size(), 54321.f);
    std::vector<__nv_bfloat16> lane16(out.size(), __nv_bfloat16{0xdead});
    emu::launch(dim3{(unsigned)n_heads, (unsigned)batch, 1}, dim3{32 * DEC_WARPS, 1, 1}, [&] {
        decode_attention_lane_per_key(lane_out.data(), q.data(), kc.data(), vc.data(), pos.data(),
                                      dims, scale);
    });
    emu::launch(dim3{(unsigned)n_heads, (unsigned)batch, 1}, dim3{32 * DEC_WARPS, 1, 1}, [&] {
        decode_attention_lane_per_key_with_bf16(lane_out2.data(), lane16.data(), q.data(),
                                                kc.data(), vc.data(), pos.data(), dims, scale);
    });
    bool lane_twin_ok =
        std::memcmp(lane_out2.data(), lane_out.data(), out.size() * sizeof(float)) == 0;
    for (size_t i = 0; i < out.size(); ++i)
        lane_twin_ok = lane_twin_ok && lane16[i].bits == __float2bfloat16_rn(lane_out[i]).bits;
    std::printf("  decode_attention_lane_per_key_with_bf16: output and its bf16 copy as the kernel + RNE: %s\n",
                lane_twin_ok ? "ok" : "FAILED");

    bool ok = twin_ok && lane_twin_ok;
    // the cache: the new token at its position, everything else unchanged (the refused row too)
    for (int b = 0; b < batch; ++b)
        for (int t = 0; t < capacity; ++t)
            for (int c = 0; c < kvd; ++c) {
                const size_t at = ((size_t)b * capacity + t) * kvd + c;
                const bool written = (unsigned)t == pos[b];
                const float wk = written ? k[(size_t)b * kvd + c] : kc0[at];
                const float wv = written ? v[(size_t)b * kvd + c] : vc0[at];
                ok = ok && kc[at] == wk && vc[at] == wv;
            }
    const bool cache_ok = ok;
    const decode_ref::Shape shape{batch, capacity, n_heads, n_kv_heads, hd};
    // the bf16 cache: the same write from the initial cache's bf16 values must give the f32
    // cache's RNE rounding, and both lane-per-key kernels read it
    auto kc16 = to_bf16(kc0), vc16 = to_bf16(vc0);
    emu::launch(dim3{blocks, 1, 1}, dim3{256, 1, 1}, [&] {
        kv_cache_write_bf16_kv(kc16.data(), vc16.data(), k.data(), v.data(), pos.data(), dims);
    });
    const bool cache16_ok = same_bits(kc16, to_bf16(kc)) && same_bits(vc16, to_bf16(vc));
    std::printf("  kv_cache_write_bf16_kv: the f32 cache's RNE rounding, nothing else written: %s\n",
                cache16_ok ? "ok" : "FAILED");
    std::vector<float> kv16_out(out.size(), 12345.f), kv16_out2(out.size(), 54321.f);
    std::vector<__nv_bfloat16> kv16_copy(out.size(), __nv_bfloat16{0xdead});
    emu::launch(dim3{(unsigned)n_heads, (unsigned)batch, 1}, dim3{32 * DEC_WARPS, 1, 1}, [&] {
        decode_attention_lane_per_key_bf16_kv(kv16_out.data(), q.data(), kc16.data(), vc16.data(),
                                              pos.data(), dims, scale);
    });
    emu::launch(dim3{(unsigned)n_heads, (unsigned)batch, 1}, dim3{32 * DEC_WARPS, 1, 1}, [&] {
        decode_attention_lane_per_key_bf16_kv_with_bf16(kv16_out2.data(), kv16_copy.data(),
                                                        q.data(), kc16.data(), vc16.data(),
                                                        pos.data(), dims, scale);
    });
    bool kv16_twin_ok =
        std::memcmp(kv16_out2.data(), kv16_out.data(), out.size() * sizeof(float)) == 0;
    for (size_t i = 0; i < out.size(); ++i)
        kv16_twin_ok = kv16_twin_ok && kv16_copy[i].bits == __float2bfloat16_rn(kv16_out[i]).bits;
    std::printf("  decode_attention_lane_per_key_bf16_kv_with_bf16: output and its bf16 copy as the kernel + RNE: %s\n",
                kv16_twin_ok ? "ok" : "FAILED");
    auto kcw = widen(kc16), vcw = widen(vc16);

    ok = cache_ok && cache16_ok && kv16_twin_ok;
    for (const auto& [name, result, kcr, vcr] :
         {std::tuple{"warp per key", &out, &kc, &vc}, std::tuple{"lane per key", &lane_out, &kc, &vc},
          std::tuple{"lane per key, bf16 cache", &kv16_out, &kcw, &vcw}}) {
        bool refused_nan = false;
        const double err = decode_ref::error_over(*result, q, *kcr, *vcr, pos, shape, refused_nan);
        const bool good = refused_nan && err <= kTol;
        ok = ok && good;
        std::printf("  %s: %d slots × %d, heads %d/%d, head_dim %d: out %.2e (bound %.0e), cache %s, "
                    "refused row %s%s\n",
                    name, batch, capacity, n_heads, n_kv_heads, hd, err, kTol,
                    cache_ok ? "ok" : "WRONG", refused_nan ? "NaN" : "NOT NaN",
                    good && cache_ok ? "" : "  FAILED");
    }
    return ok;
}

// The stacked q/k/v projection's output: rows q | k | v.
std::vector<float> stack_qkv(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, int batch, int qd, int kvd) {
    const size_t ld = qd + 2 * kvd;
    std::vector<float> qkv(batch * ld);
    for (int b = 0; b < batch; ++b) {
        std::memcpy(&qkv[b * ld], &q[(size_t)b * qd], qd * sizeof(float));
        std::memcpy(&qkv[b * ld + qd], &k[(size_t)b * kvd], kvd * sizeof(float));
        std::memcpy(&qkv[b * ld + qd + kvd], &v[(size_t)b * kvd], kvd * sizeof(float));
    }
    return qkv;
}

// Qwen3's fused q/k norm + RoPE + cache write from rows q | k | v against its composite twin:
// rmsnorm_forward over each head row of q and of k (the Backend's head_rmsnorm_forward, one
// block of row_threads(head_dim) per row) and decode_rope_cache_write of the normed q and k.
// The fused kernel runs the same rstd over the same threads: q and the caches equal to the bit,
// and over a bf16 cache the RNE of the f32 ones.
bool qk_norm_case(std::mt19937_64& rng, const std::vector<float>& q, const std::vector<float>& k,
                  const std::vector<float>& v, const std::vector<float>& kc,
                  const std::vector<float>& vc, const std::vector<unsigned>& pos,
                  const std::vector<float>& inv_freq, RopeDims rd, DecodeDims dims) {
    std::normal_distribution<float> nd(1.f, 0.5f);
    const int hd = dims.head_dim, batch = dims.batch;
    const int qd = dims.n_heads * hd, kvd = dims.n_kv_heads * hd;
    const float eps = 1e-6f;
    std::vector<float> qn(hd), kn(hd);
    for (auto* a : {&qn, &kn})
        for (auto& x : *a) x = nd(rng);
    const dim3 threads{(unsigned)std::clamp((hd + 31) / 32 * 32, 32, 1024), 1, 1};
    // composite: norms, then the fused RoPE + cache write
    std::vector<float> q1(q.size(), NAN), k1(k.size(), NAN), rq(batch * dims.n_heads), rk(batch * dims.n_kv_heads);
    emu::launch(dim3{(unsigned)rq.size()}, threads, [&] { rmsnorm_forward(q1.data(), rq.data(), q.data(), qn.data(), hd, eps); });
    emu::launch(dim3{(unsigned)rk.size()}, threads, [&] { rmsnorm_forward(k1.data(), rk.data(), k.data(), kn.data(), hd, eps); });
    auto kc1 = kc, vc1 = vc;
    emu::launch(dim3{2}, dim3{256}, [&] {
        decode_rope_cache_write(q1.data(), k1.data(), kc1.data(), vc1.data(), v.data(), pos.data(),
                                inv_freq.data(), rd, dims);
    });
    std::vector<float> qkv = stack_qkv(q, k, v, batch, qd, kvd);
    const auto qkv0 = qkv;
    const dim3 grid{(unsigned)(dims.n_heads + dims.n_kv_heads), (unsigned)batch, 1};
    std::vector<float> q2(q.size(), NAN);
    auto kc2 = kc, vc2 = vc;
    emu::launch(grid, threads, [&] {
        decode_qk_norm_rope_cache_write_stacked(q2.data(), kc2.data(), vc2.data(), qkv.data(),
                                                qn.data(), kn.data(), eps, pos.data(),
                                                inv_freq.data(), rd, dims);
    });
    std::vector<float> q3(q.size(), NAN);
    auto kc3 = to_bf16(kc), vc3 = to_bf16(vc);
    emu::launch(grid, threads, [&] {
        decode_qk_norm_rope_cache_write_stacked_bf16_kv(q3.data(), kc3.data(), vc3.data(),
                                                        qkv.data(), qn.data(), kn.data(), eps,
                                                        pos.data(), inv_freq.data(), rd, dims);
    });
    const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
        return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    const bool ok = same(q2, q1) && same(kc2, kc1) && same(vc2, vc1) && same(qkv, qkv0) &&
                    same(q3, q1) && same_bits(kc3, to_bf16(kc1)) && same_bits(vc3, to_bf16(vc1)) &&
                    !same(kc2, kc);  // and it did write
    std::printf("  decode_qk_norm_rope_cache_write_stacked[_bf16_kv] b%d h%d/%d hd%d rot%d×%.2f: q, caches equal rmsnorm_forward + decode_rope_cache_write's bits (bf16: their RNE), qkv unchanged: %s\n",
                batch, dims.n_heads, dims.n_kv_heads, hd, rd.rotary_dim, rd.scale, ok ? "ok" : "FAILED");
    return ok;
}

// decode_rope_cache_write against its composite twin: rope_apply on q and on k, then
// kv_cache_write (each checked on its own: tests/ops_cuda.rs, layer_ops_check.cpp, above).
// The same f32 operations, so q, k and both caches must be equal to the bit, a position past
// the capacity included (rotated, not written). Grid capped at 2 blocks so the grid-stride
// loop goes round.
bool fused_rope_cache_case(std::mt19937_64& rng, int batch, int capacity, int n_heads,
                           int n_kv_heads, int hd, int rotary_dim, float scale) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int kvd = n_kv_heads * hd, qd = n_heads * hd, half = rotary_dim / 2;
    std::vector<float> kc((size_t)batch * capacity * kvd), vc(kc.size());
    std::vector<float> q((size_t)batch * qd), k((size_t)batch * kvd), v(k.size());
    for (auto* a : {&kc, &vc, &q, &k, &v})
        for (auto& x : *a) x = u(rng);
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) inv_freq[i] = 1.f / std::pow(10000.f, 2.f * i / rotary_dim);
    const RopeDims rd{rotary_dim, scale};
    std::vector<unsigned> pos(batch);
    for (int b = 0; b < batch; ++b) pos[b] = (unsigned)((b * 53 + 3) % capacity);
    pos[batch - 1] = (unsigned)capacity;  // past the slot
    const DecodeDims dims{batch, capacity, n_heads, n_kv_heads, hd};
    auto q1 = q, k1 = k, kc1 = kc, vc1 = vc;
    const dim3 two{2, 1, 1}, block{256, 1, 1};
    emu::launch(two, block, [&] { rope_apply(q1.data(), pos.data(), inv_freq.data(), batch, n_heads, hd, rd, 1.f); });
    emu::launch(two, block, [&] { rope_apply(k1.data(), pos.data(), inv_freq.data(), batch, n_kv_heads, hd, rd, 1.f); });
    emu::launch(two, block, [&] { kv_cache_write(kc1.data(), vc1.data(), k1.data(), v.data(), pos.data(), dims); });
    auto q2 = q, k2 = k, kc2 = kc, vc2 = vc;
    emu::launch(two, block, [&] {
        decode_rope_cache_write(q2.data(), k2.data(), kc2.data(), vc2.data(), v.data(), pos.data(),
                                inv_freq.data(), rd, dims);
    });
    const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
        return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    const bool ok = same(q2, q1) && same(k2, k1) && same(kc2, kc1) && same(vc2, vc1) &&
                    !same(q2, q);  // and it did rotate
    std::printf("  decode_rope_cache_write b%d cap%d h%d/%d hd%d rot%d×%.2f: q, k, caches equal the composite's bits: %s\n",
                batch, capacity, n_heads, n_kv_heads, hd, rotary_dim, scale, ok ? "ok" : "FAILED");
    // the stacked variant, from rows q | k | v of one buffer: the same q and caches, qkv intact
    std::vector<float> qkv = stack_qkv(q, k, v, batch, qd, kvd);
    const auto qkv0 = qkv;
    std::vector<float> q3(q.size(), NAN);
    auto kc3 = kc, vc3 = vc;
    emu::launch(two, block, [&] {
        decode_rope_cache_write_stacked(q3.data(), kc3.data(), vc3.data(), qkv.data(), pos.data(),
                                        inv_freq.data(), rd, dims);
    });
    const bool stacked_ok = same(q3, q1) && same(kc3, kc1) && same(vc3, vc1) && same(qkv, qkv0);
    std::printf("  decode_rope_cache_write_stacked b%d cap%d h%d/%d hd%d rot%d×%.2f: q, caches equal the composite's bits, qkv unchanged: %s\n",
                batch, capacity, n_heads, n_kv_heads, hd, rotary_dim, scale, stacked_ok ? "ok" : "FAILED");
    // both over a bf16 cache: the same q (and k), the caches the RNE rounding of the f32 ones
    auto q4 = q, k4 = k;
    auto kc4 = to_bf16(kc), vc4 = to_bf16(vc);
    emu::launch(two, block, [&] {
        decode_rope_cache_write_bf16_kv(q4.data(), k4.data(), kc4.data(), vc4.data(), v.data(),
                                        pos.data(), inv_freq.data(), rd, dims);
    });
    std::vector<float> q5(q.size(), NAN);
    auto kc5 = to_bf16(kc), vc5 = to_bf16(vc);
    emu::launch(two, block, [&] {
        decode_rope_cache_write_stacked_bf16_kv(q5.data(), kc5.data(), vc5.data(), qkv.data(),
                                                pos.data(), inv_freq.data(), rd, dims);
    });
    const auto kc1_16 = to_bf16(kc1), vc1_16 = to_bf16(vc1);
    const bool bf16_ok = same(q4, q1) && same(k4, k1) && same_bits(kc4, kc1_16) &&
                         same_bits(vc4, vc1_16) && same(q5, q1) && same_bits(kc5, kc1_16) &&
                         same_bits(vc5, vc1_16) && same(qkv, qkv0);
    std::printf("  decode_rope_cache_write[_stacked]_bf16_kv b%d cap%d h%d/%d hd%d rot%d×%.2f: q, k as f32, caches the RNE of the f32 ones: %s\n",
                batch, capacity, n_heads, n_kv_heads, hd, rotary_dim, scale, bf16_ok ? "ok" : "FAILED");
    const bool qk_ok = qk_norm_case(rng, q, k, v, kc, vc, pos, inv_freq, rd, dims);
    return ok && stacked_ok && bf16_ok && qk_ok;
}

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("decode_attention.cu", argc, argv);
    bool ok = run_case(rng, 5, 70, 4, 2, 64);
    ok = run_case(rng, 3, 300, 4, 2, 34) && ok;  // head_dim % 4 ≠ 0: the scalar key rows
    ok = fused_rope_cache_case(rng, 5, 70, 4, 2, 64, 64, 1.f) && ok;
    ok = fused_rope_cache_case(rng, 5, 70, 4, 2, 64, 40, 1.19f) && ok;  // partial, scaled
    if (!quick) ok = fused_rope_cache_case(rng, 7, 33, 6, 3, 40, 40, 1.f) && ok;
    if (!quick) ok = fused_rope_cache_case(rng, 7, 33, 6, 3, 128, 96, 1.19f) && ok;
    if (!quick) {
        ok = run_case(rng, 4, 131, 3, 1, 128) && ok;
        ok = run_case(rng, 6, 33, 6, 3, 40) && ok;
    }
    std::printf(ok ? "decode_attention emulation: every figure within its bound\n"
                   : "decode_attention emulation: FAILED\n");
    return ok ? 0 : 1;
}
