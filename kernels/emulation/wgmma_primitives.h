// Host emulation (see cuda_runtime.h) of the warpgroup-MMA primitives attention_wgmma.cu keeps
// behind its `#if`, written from the PTX ISA's descriptions ("Asynchronous Warpgroup Level
// Matrix Multiply-Accumulate"): matrix descriptors without swizzling, wgmma.mma_async
// m64nNk16 bf16 → f32 with A from shared memory (K-major) or from registers, B from shared
// memory K-major or MN-major (imm-trans-b), and the fence / commit / wait protocol.
//
// An mma_async only records its operands (A registers are copied at issue, as the hardware
// reads them after it); the product is computed when a wgmma_wait retires its group, from
// shared memory as it is then, into the accumulator array as it is then. So a kernel that reads
// an accumulator before the wait, or overwrites a tile the MMAs still read, gets wrong figures
// here too; an mma_async with no wgmma.fence since the thread's last wait aborts, as does a
// thread ending with groups in flight, a descriptor outside the harness's shared memory, or
// threads of one warpgroup issuing different shapes or B descriptors. Not modelled: the
// async-proxy fence (fence_proxy_async is a no-op, a missing one is not found here) and the
// hardware's accumulation order inside one MMA.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "warp_primitives.h"

namespace emu {
// The harness points this at its dynamic shared memory: descriptors hold offsets into it.
inline const uint8_t* smem_window = nullptr;
constexpr size_t kSmemWindow = size_t(1) << 18;  // a 14-bit start address in 16-byte units

[[noreturn]] inline void wgmma_fail(const char* what) {
    std::fprintf(stderr, "emulation: wgmma: %s\n", what);
    std::abort();
}

struct WgmmaOp {
    float* d;  // this thread's accumulator fragment (n / 2 floats)
    int n;
    bool a_in_regs;
    uint32_t a[4];  // A fragment, copied at issue
    uint64_t desc_a, desc_b;
    bool trans_b, accumulate;
};
struct WgmmaQueue {
    std::vector<WgmmaOp> open;                 // issued, not committed yet
    std::vector<std::vector<WgmmaOp>> groups;  // committed, oldest first
    bool fenced = false;                       // a wgmma.fence since the last wait
    ~WgmmaQueue() {
        if (!open.empty() || !groups.empty()) wgmma_fail("a thread ended with MMAs in flight");
    }
};
inline thread_local WgmmaQueue wgmma_queue;

// Element (mn, k) of a no-swizzle operand: core matrices of 8 rows × 16 bytes, each 128
// contiguous bytes; K-major rows run along MN (8 K-elements per row), MN-major rows along K.
// LBO steps 8 along K, SBO 8 along M/N (PTX's canonical layouts ((8,m),(T,2k)):((1T,SBO),(1,LBO))
// and ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)), T = 8 bf16).
inline float wgmma_operand(uint64_t desc, int mn, int k, bool mn_major) {
    if ((desc >> 49) & 7) wgmma_fail("a descriptor with a base offset (not emulated)");
    if (desc >> 62) wgmma_fail("a swizzled descriptor (not emulated)");
    const size_t start = (size_t)(desc & 0x3fff) << 4;
    const size_t lbo = (size_t)((desc >> 16) & 0x3fff) << 4, sbo = (size_t)((desc >> 32) & 0x3fff) << 4;
    const size_t at = start + (size_t)(mn / 8) * sbo + (size_t)(k / 8) * lbo +
                      (mn_major ? (size_t)(k % 8) * 16 + (size_t)(mn % 8) * 2
                                : (size_t)(mn % 8) * 16 + (size_t)(k % 8) * 2);
    if (at + 2 > kSmemWindow) wgmma_fail("an operand element past the shared-memory window");
    uint16_t bits;
    std::memcpy(&bits, smem_window + at, 2);
    return bf16_value(bits);
}

// Retires one MMA: the warpgroup meets, each thread computes its own D fragment from every
// thread's A registers (when A is in registers) and shared memory, and they meet again before
// anyone may reuse its slot.
inline void wgmma_retire(WgmmaOp& op) {
    const int t = (int)thread_idx.x, grp = t / (4 * kWarp), r = t % (4 * kWarp);
    block->group_slots[grp][r] = &op;
    block->group_barrier[grp]->arrive_and_wait();
    const WgmmaOp* ops[4 * kWarp];
    for (int i = 0; i < 4 * kWarp; ++i) {
        ops[i] = static_cast<const WgmmaOp*>(block->group_slots[grp][i]);
        if (ops[i]->n != op.n || ops[i]->a_in_regs != op.a_in_regs ||
            ops[i]->desc_b != op.desc_b || ops[i]->trans_b != op.trans_b ||
            (!op.a_in_regs && ops[i]->desc_a != op.desc_a))
            wgmma_fail("threads of one warpgroup issued different MMAs");
    }
    auto a_at = [&](int row, int k) -> float {
        if (!op.a_in_regs) return wgmma_operand(op.desc_a, row, k, false);
        // mma.sync's A fragment per warp: reg j holds row g + 8(j & 1), cols 2c + 8(j >> 1) + {0, 1}
        const int w = row / 16, r16 = row % 16;
        const int owner = 32 * w + 4 * (r16 % 8) + (k % 8) / 2, reg = r16 / 8 + 2 * (k / 8);
        return bf16_value((uint16_t)(ops[owner]->a[reg] >> (16 * (k % 2))));
    };
    const int w = r / kWarp, lane = r % kWarp, g = lane / 4, c = lane % 4;
    for (int j = 0; j < op.n / 8; ++j)
        for (int i = 0; i < 4; ++i) {
            // D: warp w holds rows 16w .. 16w + 15, as mma.sync's C tile per 8 columns
            const int row = 16 * w + g + 8 * (i >> 1), col = 8 * j + 2 * c + (i & 1);
            float acc = op.accumulate ? op.d[4 * j + i] : 0.f;
            for (int k = 0; k < 16; ++k) acc += a_at(row, k) * wgmma_operand(op.desc_b, col, k, op.trans_b);
            op.d[4 * j + i] = acc;
        }
    block->group_barrier[grp]->arrive_and_wait();
}

inline void wgmma_issue(const WgmmaOp& op) {
    if (!wgmma_queue.fenced) wgmma_fail("mma_async with no wgmma.fence since the last wait");
    wgmma_queue.open.push_back(op);
}
}  // namespace emu

inline void wgmma_fence() { emu::wgmma_queue.fenced = true; }
inline void wgmma_commit() {
    auto& q = emu::wgmma_queue;
    q.groups.push_back(std::move(q.open));
    q.open.clear();
}
template <int N>
inline void wgmma_wait() {
    auto& q = emu::wgmma_queue;
    // every thread of the warpgroup waits here together (.sync.aligned) with the same groups
    while ((int)q.groups.size() > N) {
        for (auto& op : q.groups.front()) emu::wgmma_retire(op);
        q.groups.erase(q.groups.begin());
    }
    q.fenced = false;
}
inline void fence_proxy_async() {}
// compiler-ordering only: nothing to emulate
template <typename T, int N>
inline void pin_registers(T (&)[N]) {}

inline uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
    const auto at = (const uint8_t*)p - emu::smem_window;
    if (!emu::smem_window || at < 0 || (size_t)at >= emu::kSmemWindow || (at & 15) || (lbo & 15) ||
        (sbo & 15) || lbo >= (1u << 18) || sbo >= (1u << 18))
        emu::wgmma_fail("a descriptor outside shared memory, misaligned, or with a stride too big");
    return (uint64_t)(at >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}

template <int ND>
inline void wgmma_ss(float (&d)[ND], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    emu::WgmmaOp op{d, 2 * ND, false, {}, desc_a, desc_b, false, accumulate != 0};
    emu::wgmma_issue(op);
}
template <int ND>
inline void wgmma_rs_trans_b(float (&d)[ND], const uint32_t a[4], uint64_t desc_b, int accumulate) {
    emu::WgmmaOp op{d, 2 * ND, true, {a[0], a[1], a[2], a[3]}, 0, desc_b, true, accumulate != 0};
    emu::wgmma_issue(op);
}
inline void wgmma_m64n64k16_ss(float (&d)[32], uint64_t da, uint64_t db, int acc) { wgmma_ss(d, da, db, acc); }
inline void wgmma_m64n64k16_rs_trans_b(float (&d)[32], const uint32_t a[4], uint64_t db, int acc) {
    wgmma_rs_trans_b(d, a, db, acc);
}
inline void wgmma_m64n128k16_rs_trans_b(float (&d)[64], const uint32_t a[4], uint64_t db, int acc) {
    wgmma_rs_trans_b(d, a, db, acc);
}
