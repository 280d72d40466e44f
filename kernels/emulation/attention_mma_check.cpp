// Runs kernels/attention_mma.cu, unchanged, in the host emulation (cuda_runtime.h,
// warp_primitives.h) over the shapes of tests/attention_cuda.rs and compares out, lse, dq, dk
// and dv with an f64 reference. Fresh random inputs each run (seeded from the clock unless
// CADA_EMU_SEED is set), shared memory poisoned with NaN before every block and checked
// untouched past the size the Rust launcher reserves, outputs poisoned before each launch.
// Exit status 1 when any figure is above its bound or not finite.
//
//   scripts/emulate_kernels.sh            (g++ -O2; ~1 min on 2 cores)
//   scripts/emulate_kernels.sh --tsan     (ThreadSanitizer: a missing barrier is a race)
#define CADA_HOST_EMULATION
#include "warp_primitives.h"
#include "harness.h"

#include "../attention_mma.cu"
#include "attention_reference.h"

#include <cstdio>
#include <random>

// The dynamic shared memory of the running block (one block runs at a time).
constexpr size_t kSmemBytes = 256 * 1024;
uint4 attn_mma_smem[kSmemBytes / sizeof(uint4)];

namespace {
using attn_ref::check;
using attn_ref::delta_of;
using attn_ref::nan_vec;
using attn_ref::to_bf16;
using attn_ref::rel_err;
using attn_ref::Shape;

// Bounds, as in tests/attention_cuda.rs (MMA_TOLS): bf16 operands carry 2^-9 relative, through
// two products and a softmax.
constexpr double kOutTol = 1e-2, kLseTol = 1e-3, kGradTol = 1e-2;

// The kernels' shared memory per block, as src/backend/cuda/attention_mma.rs reserves it.
enum class Kernel { Forward, Dq, Dkv };
constexpr size_t smem_bytes(Kernel kind, int hdp) {
    const size_t row = (size_t)(hdp + MMA_SKEW) * 2;
    switch (kind) {
        case Kernel::Forward: return 4 * MMA_BK * row;
        case Kernel::Dq: return (2 * MMA_BQ + 4 * MMA_BK) * row;
        default: return (2 * MMA_BK + 4 * MMA_DKV_BQ) * row + 4 * MMA_DKV_BQ * 4;
    }
}
// the figures attention_mma.rs's `shared_memory_sizes` test pins: a layout change must move both
static_assert(smem_bytes(Kernel::Forward, 64) == 36864 && smem_bytes(Kernel::Forward, 128) == 69632);
static_assert(smem_bytes(Kernel::Dq, 64) == 55296 && smem_bytes(Kernel::Dq, 128) == 104448);
static_assert(smem_bytes(Kernel::Dkv, 64) == 37376 && smem_bytes(Kernel::Dkv, 128) == 70144);

constexpr uint32_t kPoison = 0xffffffffu;  // a NaN as f32, two NaNs as bf16

void poison_smem() { std::memset(attn_mma_smem, 0xff, sizeof attn_mma_smem); }

bool smem_tail_untouched(size_t reserved) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(attn_mma_smem);
    for (size_t i = reserved; i < kSmemBytes; ++i)
        if (p[i] != 0xff) return false;
    return true;
}

// Runs one kernel over the grid, poisoning shared memory before every block; false when a
// block wrote past `reserved` bytes.
bool run(dim3 grid, size_t reserved, const std::function<void()>& kernel) {
    bool ok = true;
    emu::launch(grid, dim3{MMA_THREADS, 1, 1}, kernel, poison_smem,
                [&] { ok = ok && smem_tail_untouched(reserved); });
    return ok;
}

bool run_shape(const Shape& s, std::mt19937_64& rng) {
    const auto [q, k, v, dout, want] = attn_ref::random_inputs(s, rng);
    const size_t nq = q.size(), nk = k.size(), nl = (size_t)s.batch * s.n_heads * s.seq;
    // the kernels read bf16 copies; the reference sees the f32 values
    const auto qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v), dob = to_bf16(dout);

    const AttnDims dims{s.batch, s.seq, s.n_heads, s.n_kv_heads, s.head_dim};
    const float scale = 1.f / std::sqrt((float)s.head_dim);
    const int hdp = s.head_dim <= 64 ? 64 : 128;
    std::vector<float> out = nan_vec(nq), lse = nan_vec(nl);
    const dim3 qgrid{(unsigned)((s.seq + MMA_BQ - 1) / MMA_BQ), (unsigned)s.n_heads,
                     (unsigned)s.batch};
    bool smem_ok = run(qgrid, smem_bytes(Kernel::Forward, hdp), [&] {
        if (hdp == 64)
            attention_mma_forward_hd64(out.data(), lse.data(), qb.data(), kb.data(), vb.data(), dims,
                                       scale);
        else
            attention_mma_forward_hd128(out.data(), lse.data(), qb.data(), kb.data(), vb.data(),
                                        dims, scale);
    });
    // δ = rowsum(dO∘O) from the kernel's own output, in f32 as attention_backward_delta stores it
    const std::vector<float> delta = delta_of(s, dout, out);
    std::vector<float> dq = nan_vec(nq), dk = nan_vec(nk), dv = nan_vec(nk);
    smem_ok = run(qgrid, smem_bytes(Kernel::Dq, hdp), [&] {
                  if (hdp == 64)
                      attention_mma_backward_dq_hd64(dq.data(), dob.data(), qb.data(), kb.data(),
                                                     vb.data(), lse.data(), delta.data(), dims,
                                                     scale);
                  else
                      attention_mma_backward_dq_hd128(dq.data(), dob.data(), qb.data(), kb.data(),
                                                      vb.data(), lse.data(), delta.data(), dims,
                                                      scale);
              }) &&
              smem_ok;
    const dim3 kgrid{(unsigned)((s.seq + MMA_BK - 1) / MMA_BK), (unsigned)s.n_kv_heads,
                     (unsigned)s.batch};
    smem_ok = run(kgrid, smem_bytes(Kernel::Dkv, hdp), [&] {
                  if (hdp == 64)
                      attention_mma_backward_dkv_hd64(dk.data(), dv.data(), dob.data(), qb.data(),
                                                      kb.data(), vb.data(), lse.data(),
                                                      delta.data(), dims, scale);
                  else
                      attention_mma_backward_dkv_hd128(dk.data(), dv.data(), dob.data(),
                                                       qb.data(), kb.data(), vb.data(), lse.data(),
                                                       delta.data(), dims, scale);
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

}  // namespace

int main(int argc, char** argv) {
    auto [rng, quick] = emu::start_harness("attention_mma.cu", argc, argv);
    // tests/attention_cuda.rs's mma shapes: odd lengths, GQA groups 1..7, padded head dims
    std::vector<Shape> shapes = {{2, 77, 9, 3, 64}, {1, 200, 4, 2, 128}, {1, 130, 14, 2, 64},
                                 {1, 70, 2, 1, 32}, {1, 90, 2, 2, 96},   {2, 33, 2, 1, 37}};
    // quick (ThreadSanitizer): three key tiles, so every slot of the pipelines is reused
    if (quick) shapes = {{1, 150, 2, 1, 64}, {1, 40, 2, 2, 96}, {1, 100, 2, 1, 37}};
    bool ok = true;
    for (const auto& s : shapes) ok = run_shape(s, rng) && ok;
    std::printf(ok ? "attention_mma emulation: every figure within its bound\n"
                   : "attention_mma emulation: FAILED\n");
    return ok ? 0 : 1;
}
