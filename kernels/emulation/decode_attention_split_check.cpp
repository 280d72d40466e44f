// Runs kernels/decode_attention_split.cu, unchanged, in the host emulation: the split-KV decode
// attention (partials, then the merge) with the launch geometry of src/backend/cuda/decode.rs,
// under several split plans (one split; 32-key splits; one between) and GQA groups of 2, 3, 7
// and 10 (the last in two head tiles, 8 + 2), against f64 attention over each slot, over an f32
// cache and a bf16 one. The partials buffer is NaN-poisoned before each launch: every output
// must be finite and within its bound (so no unwritten partial was read), the partials of
// splits past a sequence's length must still be NaN (none written), a position past the
// capacity gives a NaN row, and the merge's `_with_bf16` twin gives the same f32 bits and their
// RNE rounding. Fresh random inputs each run (CADA_EMU_SEED to repeat). Exit status 1 on any
// failure.
#define CADA_HOST_EMULATION
#include "cuda_runtime.h"
#include "decode_reference.h"
#include "harness.h"
#include "math_constants.h"

#include "../decode_attention_split.cu"

#include <cstdio>
#include <cstring>
#include <random>

namespace {

constexpr double kTol = 1e-5;  // f32 online softmax against f64, as decode_attention.cu

// A plan of `splits` ranges of whole 32-key chunks covering the capacity (as decode.rs makes).
DecodeSplit plan(int capacity, int splits, int group) {
    int kps = (capacity + splits - 1) / splits;
    kps = (kps + 31) / 32 * 32;
    return DecodeSplit{(capacity + kps - 1) / kps, kps,
                       (group + DEC_SPLIT_GROUP - 1) / DEC_SPLIT_GROUP};
}

template <typename T>
bool run_plan(const char* cache_name, const std::vector<T>& kc, const std::vector<T>& vc,
              const std::vector<float>& kc_f, const std::vector<float>& vc_f,
              const std::vector<float>& q, const std::vector<unsigned>& pos,
              decode_ref::Shape shape, DecodeSplit sp) {
    const DecodeDims dims{shape.batch, shape.capacity, shape.n_heads, shape.n_kv_heads, shape.hd};
    const size_t slots = (size_t)shape.batch * shape.n_heads * sp.splits;
    std::vector<float> partials(slots * (2 + shape.hd), NAN);
    const float scale = 1.f / std::sqrt((float)shape.hd);
    const dim3 block{32 * DEC_WARPS, 1, 1};
    const dim3 grid1{(unsigned)(shape.n_kv_heads * sp.head_tiles), (unsigned)shape.batch,
                     (unsigned)sp.splits};
    emu::launch(grid1, block, [&] {
        if constexpr (std::is_same_v<T, float>)
            decode_attention_split_partials(partials.data(), q.data(), kc.data(), vc.data(),
                                            pos.data(), dims, sp, scale);
        else
            decode_attention_split_partials_bf16_kv(partials.data(), q.data(), kc.data(),
                                                    vc.data(), pos.data(), dims, sp, scale);
    });
    // the partials of a split past a sequence's keys (or of a refused sequence): never written
    bool unused_untouched = true;
    for (int b = 0; b < shape.batch; ++b) {
        const int used = pos[b] >= (unsigned)shape.capacity
                             ? 0
                             : ((int)pos[b] + sp.keys_per_split) / sp.keys_per_split;
        for (int h = 0; h < shape.n_heads; ++h)
            for (int k = 0; k < sp.splits; ++k) {
                const size_t slot = ((size_t)b * shape.n_heads + h) * sp.splits + k;
                const bool untouched = std::isnan(partials[2 * slot]) &&
                                       std::isnan(partials[2 * slot + 1]);
                if (k >= used) unused_untouched = unused_untouched && untouched;
                else unused_untouched = unused_untouched && !untouched;  // and used ones written
            }
    }
    const size_t n_out = (size_t)shape.batch * shape.n_heads * shape.hd;
    std::vector<float> out(n_out, 12345.f), out2(n_out, 54321.f);
    std::vector<__nv_bfloat16> out16(n_out, __nv_bfloat16{0xdead});
    const dim3 grid2{(unsigned)shape.n_heads, (unsigned)shape.batch, 1};
    emu::launch(grid2, block, [&] {
        decode_attention_merge_splits(out.data(), partials.data(), pos.data(), dims, sp);
    });
    emu::launch(grid2, block, [&] {
        decode_attention_merge_splits_with_bf16(out2.data(), out16.data(), partials.data(),
                                                pos.data(), dims, sp);
    });
    bool twin_ok = std::memcmp(out2.data(), out.data(), n_out * sizeof(float)) == 0;
    for (size_t i = 0; i < n_out; ++i)
        twin_ok = twin_ok && out16[i].bits == __float2bfloat16_rn(out[i]).bits;
    bool refused_nan = false;
    const double err = decode_ref::error_over(out, q, kc_f, vc_f, pos, shape, refused_nan);
    const bool ok = err <= kTol && refused_nan && unused_untouched && twin_ok;
    std::printf("  %s cache, %d slots × %d, heads %d/%d, head_dim %d, %d splits of %d keys, %d "
                "head tile(s): out %.2e (bound %.0e), refused row %s, unused partials %s, "
                "_with_bf16 twin %s%s\n",
                cache_name, shape.batch, shape.capacity, shape.n_heads, shape.n_kv_heads,
                shape.hd, sp.splits, sp.keys_per_split, sp.head_tiles, err, kTol,
                refused_nan ? "NaN" : "NOT NaN", unused_untouched ? "untouched" : "WRONG",
                twin_ok ? "ok" : "WRONG", ok ? "" : "  FAILED");
    return ok;
}

bool run_case(std::mt19937_64& rng, decode_ref::Shape shape, bool quick) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int kvd = shape.n_kv_heads * shape.hd;
    std::vector<float> kc((size_t)shape.batch * shape.capacity * kvd), vc(kc.size());
    std::vector<float> q((size_t)shape.batch * shape.n_heads * shape.hd);
    for (auto* a : {&kc, &vc, &q})
        for (auto& x : *a) x = u(rng) * 2.f;  // scores up to a few units: a peaked softmax
    std::vector<unsigned> pos(shape.batch);
    for (int b = 0; b < shape.batch; ++b) pos[b] = (unsigned)((b * 41 + 7) % shape.capacity);
    pos[0] = 0;  // a sequence's first token: one key, one used split
    if (shape.batch > 2) pos[1] = (unsigned)shape.capacity - 1;  // every split used
    pos[shape.batch - 1] = (unsigned)shape.capacity;             // past the slot: refused
    const int group = shape.n_heads / shape.n_kv_heads;
    const auto kc16 = decode_ref::to_bf16(kc), vc16 = decode_ref::to_bf16(vc);
    const auto kcw = decode_ref::widen(kc16), vcw = decode_ref::widen(vc16);
    bool ok = true;
    // --quick (ThreadSanitizer): the middle plan only, whose blocks have several ranges
    for (int splits : {3, 1, (shape.capacity + 31) / 32}) {
        const DecodeSplit sp = plan(shape.capacity, splits, group);
        ok = run_plan("f32", kc, vc, kc, vc, q, pos, shape, sp) && ok;
        ok = run_plan("bf16", kc16, vc16, kcw, vcw, q, pos, shape, sp) && ok;
        if (quick) break;
    }
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("decode_attention_split.cu", argc, argv);
    // --quick (ThreadSanitizer, slow per thread): the group of 10, head tiles 8 + 2
    bool ok = run_case(rng, {3, 90, 10, 1, 40}, quick);
    if (!quick) {
        ok = run_case(rng, {5, 70, 4, 2, 64}, quick) && ok;
        ok = run_case(rng, {3, 300, 9, 3, 34}, quick) && ok;   // SmolLM2's group; scalar key rows
        ok = run_case(rng, {4, 131, 14, 2, 128}, quick) && ok;  // Qwen2.5-0.5B's group
    }
    std::printf(ok ? "decode_attention_split emulation: every figure within its bound\n"
                   : "decode_attention_split emulation: FAILED\n");
    return ok ? 0 : 1;
}
