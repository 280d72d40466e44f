// Host emulation (see cuda_runtime.h) of the primitives attention_mma.cu keeps behind
// `#ifndef CADA_HOST_EMULATION`, written from the PTX ISA's descriptions: bf16 packing (round
// to nearest even), ldmatrix (.x4 and .x4.trans), mma.sync.m16n8k16 bf16 → f32, and cp.async
// (deferred to the wait that retires it, see below).
#pragma once
#include <cstdio>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace emu {
inline int lane_id() { return (int)(threadIdx.x % kWarp); }
}  // namespace emu

inline uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)emu::bf16_bits(lo) | ((uint32_t)emu::bf16_bits(hi) << 16);
}

// Matrix i's row r comes from the address lane 8i + r gave; lane l gets row l / 4, columns
// 2(l % 4) + {0, 1} (non-transposed) or rows 2(l % 4) + {0, 1}, column l / 4 (transposed).
inline void ldsm_common(uint32_t r[4], const uint16_t* row, bool trans) {
    // the hardware needs each row address 16-byte aligned (a misaligned one faults on the GPU)
    if ((uintptr_t)row & 15) {
        std::fprintf(stderr, "emulation: ldmatrix row address %p is not 16-byte aligned\n",
                     (const void*)row);
        std::abort();
    }
    const uint64_t mine = (uint64_t)(uintptr_t)row;
    auto table = emu::exchange(&mine, 1);
    const int l = emu::lane_id();
    for (int i = 0; i < 4; ++i) {
        uint16_t e0, e1;
        if (!trans) {
            const uint16_t* p = (const uint16_t*)(uintptr_t)table[8 * i + l / 4][0];
            e0 = p[2 * (l % 4)];
            e1 = p[2 * (l % 4) + 1];
        } else {
            const uint16_t* p0 = (const uint16_t*)(uintptr_t)table[8 * i + 2 * (l % 4)][0];
            const uint16_t* p1 = (const uint16_t*)(uintptr_t)table[8 * i + 2 * (l % 4) + 1][0];
            e0 = p0[l / 4];
            e1 = p1[l / 4];
        }
        r[i] = (uint32_t)e0 | ((uint32_t)e1 << 16);
    }
}
inline void ldsm_x4(uint32_t r[4], const uint16_t* row) { ldsm_common(r, row, false); }
inline void ldsm_x4_trans(uint32_t r[4], const uint16_t* row) { ldsm_common(r, row, true); }

// c += A·B, A 16×16 and B 16×8 gathered from the fragments of all 32 lanes (g = lane / 4,
// q = lane % 4): A reg j = row g + 8(j & 1), cols 2q + 8(j >> 1) + {0, 1}; B reg j = k rows
// 2q + 8j + {0, 1}, column g; C reg i = row g + 8(i >> 1), col 2q + (i & 1).
inline void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    const uint64_t words[3] = {(uint64_t)a[0] | ((uint64_t)a[1] << 32),
                               (uint64_t)a[2] | ((uint64_t)a[3] << 32),
                               (uint64_t)b0 | ((uint64_t)b1 << 32)};
    auto table = emu::exchange(words, 3);
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, q = l % 4;
        const uint32_t ar[4] = {(uint32_t)table[l][0], (uint32_t)(table[l][0] >> 32),
                                (uint32_t)table[l][1], (uint32_t)(table[l][1] >> 32)};
        for (int j = 0; j < 4; ++j) {
            const int row = g + 8 * (j & 1), col = 2 * q + 8 * (j >> 1);
            A[row][col] = emu::bf16_value((uint16_t)(ar[j] & 0xffff));
            A[row][col + 1] = emu::bf16_value((uint16_t)(ar[j] >> 16));
        }
        const uint32_t br[2] = {(uint32_t)table[l][2], (uint32_t)(table[l][2] >> 32)};
        for (int j = 0; j < 2; ++j) {
            const int k = 2 * q + 8 * j;
            B[k][g] = emu::bf16_value((uint16_t)(br[j] & 0xffff));
            B[k + 1][g] = emu::bf16_value((uint16_t)(br[j] >> 16));
        }
    }
    const int l = emu::lane_id(), g = l / 4, q = l % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
        float acc = c[i];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        c[i] = acc;
    }
}

// cp.async, landing as late as the hardware may: the source is read at issue (the kernels'
// inputs do not change during a launch) but the 16 bytes reach shared memory only when a
// cp_async_wait retires their group. A wait that retires too little leaves the tile's old
// contents (poison, or the previous tile) and fails the figures; a slot issued while another
// warp still reads it is a racing write at the wait, which ThreadSanitizer reports; a thread
// that ends with copies still in flight aborts.
namespace emu {
struct PendingCopy {
    void* dst;
    int size;
    uint8_t bytes[16];
};
struct CpAsyncQueue {
    std::vector<PendingCopy> open;                  // issued, not committed yet
    std::vector<std::vector<PendingCopy>> groups;   // committed, oldest first
    ~CpAsyncQueue() {
        size_t in_flight = open.size();
        for (const auto& g : groups) in_flight += g.size();
        if (in_flight) {
            std::fprintf(stderr, "emulation: a thread ended with %zu cp.async copies in flight\n",
                         in_flight);
            std::abort();
        }
    }
};
inline thread_local CpAsyncQueue cp_async_queue;
}  // namespace emu

inline void cp_async_n(void* smem, const void* gmem, bool valid, int size) {
    // cp.async of `size` bytes needs both addresses aligned to `size`, as on the GPU
    if (((uintptr_t)smem | (valid ? (uintptr_t)gmem : 0)) & (uintptr_t)(size - 1)) {
        std::fprintf(stderr, "emulation: cp.async of %d bytes at misaligned %p <- %p\n", size,
                     smem, gmem);
        std::abort();
    }
    emu::PendingCopy c{smem, size, {}};
    if (valid) std::memcpy(c.bytes, gmem, size);  // else zero bytes (src-size 0)
    emu::cp_async_queue.open.push_back(c);
}
inline void cp_async_16(void* smem, const void* gmem, bool valid) {
    cp_async_n(smem, gmem, valid, 16);
}
inline void cp_async_4(void* smem, const void* gmem, bool valid) {
    cp_async_n(smem, gmem, valid, 4);
}
inline void cp_async_commit() {
    auto& q = emu::cp_async_queue;
    q.groups.push_back(std::move(q.open));
    q.open.clear();
}
template <int N>
inline void cp_async_wait() {
    auto& q = emu::cp_async_queue;
    while ((int)q.groups.size() > N) {
        for (const auto& c : q.groups.front()) std::memcpy(c.dst, c.bytes, c.size);
        q.groups.erase(q.groups.begin());
    }
}
