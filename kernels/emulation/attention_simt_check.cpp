// Runs kernels/attention.cu (the f32 training attention, the GPU default), unchanged, in the
// host emulation (cuda_runtime.h) over the shapes of tests/attention_cuda.rs, with the
// launch configurations of src/backend/cuda/attention.rs, and compares out, lse, dq, dk and dv
// with the f64 reference of attention_reference.h. δ comes from the file's own
// `attention_backward_delta`. Fresh random inputs each run (CADA_EMU_SEED to repeat), outputs
// poisoned with NaN. Exit status 1 when any figure is above its bound or not finite.
#define CADA_HOST_EMULATION
#include "math_constants.h"
#include "harness.h"
#include "warp_primitives.h"  // emu::bf16_bits

#include "../attention.cu"
#include "attention_reference.h"

#include <random>

namespace {
using attn_ref::check;
using attn_ref::rel_err;
using attn_ref::Shape;

// f32 kernels: reassociation only (tests/attention_cuda.rs SIMT_TOLS, here against f64)
constexpr double kValueTol = 1e-5, kGradTol = 1e-4;

using attn_ref::nan_vec;

bool run_shape(const Shape& s, std::mt19937_64& rng) {
    const auto [q, k, v, dout, want] = attn_ref::random_inputs(s, rng);
    const size_t nq = q.size(), nk = k.size(), rows = (size_t)s.batch * s.n_heads * s.seq;
    const AttnDims dims{s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim};
    const float scale = 1.f / std::sqrt((float)s.head_dim);
    const unsigned qtiles = (unsigned)((s.seq + ATTN_ROWS - 1) / ATTN_ROWS);
    const unsigned ktiles = (unsigned)((s.seq + DKV_KEYS - 1) / DKV_KEYS);

    auto out = nan_vec(nq), lse = nan_vec(rows);
    emu::launch(dim3{qtiles, (unsigned)s.n_heads, (unsigned)s.batch}, dim3{32 * ATTN_ROWS, 1, 1},
                [&] {
                    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), dims,
                                      scale);
                });
    auto delta = nan_vec(rows);
    const unsigned warps = 8;  // attention_delta's launch: a warp per row
    emu::launch(dim3{(unsigned)((rows + warps - 1) / warps), 1, 1}, dim3{32 * warps, 1, 1},
                [&] { attention_backward_delta(delta.data(), dout.data(), out.data(), dims); });
    // δ from an output kept in bf16 (attention_backward_delta_bf16) must equal δ from the same
    // values widened to f32: the kernels differ only in the load
    std::vector<__nv_bfloat16> out16(nq);
    std::vector<float> out_widened(nq);
    for (size_t i = 0; i < nq; ++i) {
        out16[i].bits = emu::bf16_bits(out[i]);
        out_widened[i] = emu::bf16_value(out16[i].bits);
    }
    auto delta16 = nan_vec(rows), delta_widened = nan_vec(rows);
    emu::launch(dim3{(unsigned)((rows + warps - 1) / warps), 1, 1}, dim3{32 * warps, 1, 1}, [&] {
        attention_backward_delta_bf16(delta16.data(), dout.data(), out16.data(), dims);
    });
    emu::launch(dim3{(unsigned)((rows + warps - 1) / warps), 1, 1}, dim3{32 * warps, 1, 1}, [&] {
        attention_backward_delta(delta_widened.data(), dout.data(), out_widened.data(), dims);
    });
    const bool delta16_ok =
        std::memcmp(delta16.data(), delta_widened.data(), rows * sizeof(float)) == 0 &&
        std::all_of(delta16.begin(), delta16.end(), [](float x) { return std::isfinite(x); });
    auto dq = nan_vec(nq), dk = nan_vec(nk), dv = nan_vec(nk);
    emu::launch(dim3{qtiles, (unsigned)s.n_heads, (unsigned)s.batch}, dim3{32 * ATTN_ROWS, 1, 1},
                [&] {
                    attention_backward_dq(dq.data(), dout.data(), q.data(), k.data(), v.data(),
                                          lse.data(), delta.data(), dims, scale);
                });
    emu::launch(dim3{ktiles, (unsigned)s.n_kv_heads, (unsigned)s.batch},
                dim3{32 * DKV_KEYS, 1, 1}, [&] {
                    attention_backward_dkv(dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                           v.data(), lse.data(), delta.data(), dims, scale);
                });
    std::printf("  B %d, T %d, heads %d/%d, head_dim %d\n", s.batch, s.seq, s.n_heads,
                s.n_kv_heads, s.head_dim);
    bool ok = true;
    check("out", rel_err(out, want.out), kValueTol, ok);
    check("lse", rel_err(lse, want.lse), kValueTol, ok);
    check("dq", rel_err(dq, want.dq), kGradTol, ok);
    check("dk", rel_err(dk, want.dk), kGradTol, ok);
    check("dv", rel_err(dv, want.dv), kGradTol, ok);
    std::printf("    δ from a bf16 output: %s\n", delta16_ok ? "bit-identical" : "DIFFERS  FAILED");
    return ok && delta16_ok;
}

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("attention.cu", argc, argv);
    // tests/attention_cuda.rs's f32 shapes, and one past a 32-key tile with GQA 3
    std::vector<Shape> shapes = {{2, 37, 4, 2, 64}, {1, 45, 3, 1, 128}, {3, 9, 2, 2, 40},
                                 {1, 70, 6, 2, 64}};
    if (quick) shapes = {{1, 40, 2, 1, 64}, {2, 9, 2, 2, 40}};
    bool ok = true;
    for (const auto& s : shapes) ok = run_shape(s, rng) && ok;
    std::printf(ok ? "attention (simt) emulation: every figure within its bound\n"
                   : "attention (simt) emulation: FAILED\n");
    return ok ? 0 : 1;
}
