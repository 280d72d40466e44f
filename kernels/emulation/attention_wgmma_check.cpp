// Runs kernels/attention_wgmma.cu, unchanged, in the host emulation (cuda_runtime.h,
// warp_primitives.h, wgmma_primitives.h) over the shapes of tests/attention_cuda.rs and compares
// out, lse, dq, dk and dv with an f64 reference. Fresh random inputs each run
// (seeded from the clock unless CADA_EMU_SEED is set), shared memory poisoned with NaN before
// every block and checked untouched past the size the Rust launcher reserves, outputs poisoned
// before each launch. Exit status 1 when any figure is above its bound or not finite.
#define CADA_HOST_EMULATION
#include "wgmma_primitives.h"
#include "harness.h"

#include "../attention_wgmma.cu"
#include "../wgmma_probe.cu"
#include "attention_reference.h"

#include <cstdio>
#include <random>

// The dynamic shared memory of the running block (one block runs at a time), under each kernel
// file's name.
constexpr size_t kSmemBytes = 256 * 1024;
uint4 attn_wgmma_smem[kSmemBytes / sizeof(uint4)];
uint4 wgmma_probe_smem[kSmemBytes / sizeof(uint4)];

namespace {
using attn_ref::check;
using attn_ref::delta_of;
using attn_ref::nan_vec;
using attn_ref::to_bf16;
using attn_ref::rel_err;
using attn_ref::Shape;

// Bounds, as in tests/attention_cuda.rs (MMA_TOLS): bf16 operands through two products.
constexpr double kOutTol = 1e-2, kLseTol = 1e-3, kGradTol = 1e-2;

// Shared memory per block, as src/backend/cuda/attention_wgmma.rs reserves it (its
// `shared_memory_sizes` test pins the same figures).
constexpr size_t forward_smem(int hdp) { return (size_t)(WGMMA_BQ + 4 * WGMMA_BK) * hdp * 2; }
constexpr size_t dq_smem(int hdp) { return (size_t)(2 * WGMMA_BQ + 4 * WGMMA_BK) * hdp * 2; }
constexpr size_t dkv_smem(int hdp) {
    return (size_t)(2 * WGMMA_DKV_BK + 4 * WGMMA_DKV_BQ) * hdp * 2 + 4 * WGMMA_DKV_BQ * 4;
}
static_assert(forward_smem(64) == 49152 && forward_smem(128) == 98304);
static_assert(dq_smem(64) == 65536 && dq_smem(128) == 131072);
static_assert(dkv_smem(64) == 66560 && dkv_smem(128) == 132096);

bool smem_tail_untouched(const uint4* smem, size_t reserved) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(smem);
    for (size_t i = reserved; i < kSmemBytes; ++i)
        if (p[i] != 0xff) return false;
    return true;
}

// Runs one kernel over the grid, poisoning its shared memory before every block; false when a
// block wrote past `reserved` bytes.
bool run(dim3 grid, size_t reserved, const std::function<void()>& kernel) {
    bool ok = true;
    emu::launch(grid, dim3{WGMMA_THREADS, 1, 1}, kernel,
                [&] { std::memset(attn_wgmma_smem, 0xff, kSmemBytes); },
                [&] { ok = ok && smem_tail_untouched(attn_wgmma_smem, reserved); });
    return ok;
}

bool run_shape(const Shape& s, std::mt19937_64& rng) {
    const auto [q, k, v, dout, want] = attn_ref::random_inputs(s, rng);
    const size_t nq = q.size(), nk = k.size(), nl = (size_t)s.batch * s.n_heads * s.seq;
    const auto qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v), dob = to_bf16(dout);
    const AttnDims dims{s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim};
    const float scale = 1.f / std::sqrt((float)s.head_dim);
    const int hdp = s.head_dim <= 64 ? 64 : 128;
    std::vector<float> out = nan_vec(nq), lse = nan_vec(nl);
    const dim3 fgrid{(unsigned)((s.seq + WGMMA_BQ - 1) / WGMMA_BQ), (unsigned)s.n_heads,
                     (unsigned)s.batch};
    bool smem_ok = run(fgrid, forward_smem(hdp), [&] {
        if (hdp == 64)
            attention_wgmma_forward_hd64(out.data(), lse.data(), qb.data(), kb.data(), vb.data(),
                                         dims, scale);
        else
            attention_wgmma_forward_hd128(out.data(), lse.data(), qb.data(), kb.data(), vb.data(),
                                          dims, scale);
    });
    const std::vector<float> delta = delta_of(s, dout, out);
    std::vector<float> dq = nan_vec(nq), dk = nan_vec(nk), dv = nan_vec(nk);
    smem_ok = run(fgrid, dq_smem(hdp), [&] {
                  (hdp == 64 ? attention_wgmma_backward_dq_hd64 : attention_wgmma_backward_dq_hd128)(
                      dq.data(), dob.data(), qb.data(), kb.data(), vb.data(), lse.data(),
                      delta.data(), dims, scale);
              }) &&
              smem_ok;
    const dim3 kgrid{(unsigned)((s.seq + WGMMA_DKV_BK - 1) / WGMMA_DKV_BK), (unsigned)s.n_kv_heads,
                     (unsigned)s.batch};
    smem_ok = run(kgrid, dkv_smem(hdp), [&] {
                  (hdp == 64 ? attention_wgmma_backward_dkv_hd64
                             : attention_wgmma_backward_dkv_hd128)(
                      dk.data(), dv.data(), dob.data(), qb.data(), kb.data(), vb.data(),
                      lse.data(), delta.data(), dims, scale);
              }) &&
              smem_ok;

    std::printf("  B %d, T %d, heads %d/%d, head_dim %d (padded to %d)\n", s.batch, s.seq,
                s.n_heads, s.n_kv_heads, s.head_dim, hdp);
    bool ok = true;
    check("out", rel_err(out, want.out), kOutTol, ok);
    check("lse", rel_err(lse, want.lse), kLseTol, ok);
    check("dq", rel_err(dq, want.dq), kGradTol, ok);
    check("dk", rel_err(dk, want.dk), kGradTol, ok);
    check("dv", rel_err(dv, want.dv), kGradTol, ok);
    if (!smem_ok) std::printf("    shared memory written past the launcher's reservation  FAILED\n");
    return ok && smem_ok;
}

// wgmma_probe.cu's two products against the host's, on bf16-exact random inputs (so the f32
// accumulation of 16 products is the only rounding): 1e-6.
bool run_probe(std::mt19937_64& rng) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto draw = [&](size_t n) {
        std::vector<uint16_t> x(n);
        for (auto& e : x) e = emu::bf16_bits(u(rng));
        return x;
    };
    const auto a = draw(64 * 16), bt = draw(64 * 16), w = draw(16 * 64);
    std::vector<float> dss(64 * 64, NAN), drs(64 * 64, NAN);
    emu::smem_window = reinterpret_cast<const uint8_t*>(wgmma_probe_smem);
    emu::launch(dim3{1, 1, 1}, dim3{WGMMA_PROBE_THREADS, 1, 1}, [&] {
        wgmma_layout_probe(dss.data(), drs.data(), a.data(), bt.data(), w.data());
    });
    emu::smem_window = reinterpret_cast<const uint8_t*>(attn_wgmma_smem);
    std::vector<double> want_ss(64 * 64), want_rs(64 * 64);
    for (int i = 0; i < 64; ++i)
        for (int j = 0; j < 64; ++j) {
            double ss = 0, rs = 0;
            for (int k = 0; k < 16; ++k) {
                const double x = emu::bf16_value(a[i * 16 + k]);
                ss += x * emu::bf16_value(bt[j * 16 + k]);
                rs += x * emu::bf16_value(w[k * 64 + j]);
            }
            want_ss[i * 64 + j] = ss;
            want_rs[i * 64 + j] = rs;
        }
    std::printf("  wgmma_layout_probe\n");
    bool ok = true;
    check("A·Bt (shared, K-major)", rel_err(dss, want_ss), 1e-6, ok);
    check("A·W (registers, N-major)", rel_err(drs, want_rs), 1e-6, ok);
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("attention_wgmma.cu", argc, argv);
    emu::smem_window = reinterpret_cast<const uint8_t*>(attn_wgmma_smem);
    // tests/attention_cuda.rs's shapes: odd lengths (a block's second warpgroup past T, tiles
    // above one group's diagonal but not the other's), GQA groups 1..7, padded head dims, and
    // T = 300 (dk/dv blocks streaming five query tiles per head)
    std::vector<Shape> shapes = {{2, 77, 9, 3, 64}, {1, 200, 4, 2, 128}, {1, 130, 14, 2, 64},
                                 {1, 70, 2, 1, 32}, {1, 90, 2, 2, 96},   {2, 33, 2, 1, 37},
                                 {1, 300, 2, 1, 128}};
    // quick (ThreadSanitizer): three key tiles, so every slot of the pipeline is reused
    if (quick) shapes = {{1, 150, 2, 1, 64}, {1, 40, 2, 2, 96}, {1, 140, 2, 1, 37}};
    bool ok = run_probe(rng);
    for (const auto& s : shapes) ok = run_shape(s, rng) && ok;
    std::printf(ok ? "attention_wgmma emulation: every figure within its bound\n"
                   : "attention_wgmma emulation: FAILED\n");
    return ok ? 0 : 1;
}
