// Host emulation of the CUDA execution model, just enough to run a kernel file unchanged on the
// CPU: every CUDA thread of a block is a std::thread, `__syncthreads` is a barrier over the
// block, and the warp-collective primitives (shuffles and votes here; ldmatrix, mma and
// cp.async in warp_primitives.h) exchange values through per-warp slots behind a barrier over
// the warp. One block runs at a time, so dynamic shared memory (`CADA_DYNAMIC_SMEM`) is a
// global array defined by the harness and static `__shared__` variables are function-local
// statics; atomics are std::atomic_ref. The blocks run in a fresh random order per launch: a GPU
// promises no order, so a kernel that needs one fails here. Why: no session has had a GPU, and this checks a
// kernel's index math (fragments, masks, pipelines, scans) against a reference;
// ThreadSanitizer over it finds a missing barrier. It says nothing about speed, and the real
// hardware can still differ (exp2f's last ulp, the MMA's internal accumulation order, and
// anything that depends on blocks running at the same time: memory ordering between them).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <climits>
#include <barrier>
#include <cmath>
#include <math.h>  // isfinite, fmax, … in the global namespace, as CUDA has them
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// one block runs at a time, so a function-local static is exactly a block's shared variable
#define __shared__ static
#define CADA_DYNAMIC_SMEM(type, name) extern type name[]
#define __launch_bounds__(...)
#define __restrict__

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};
struct alignas(8) uint2 {
    uint32_t x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};

inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }

using std::max;
using std::min;

namespace emu {
constexpr int kWarp = 32;
constexpr int kMaxWarps = 32;

// The running block: its barriers and the per-warp exchange slots. Each collective writes the
// slots of one parity, crosses the warp barrier once and reads them; the next collective uses
// the other parity, so a lane that runs ahead cannot overwrite slots still being read (it
// would first have to cross the next barrier, which waits for every lane).
struct Block {
    std::unique_ptr<std::barrier<>> block_barrier;
    std::unique_ptr<std::barrier<>> warp_barrier[kMaxWarps];
    uint64_t slots[kMaxWarps][2][kWarp][8];
    int parity[kMaxWarps][kWarp];
    // warpgroups (4 warps) for the wgmma emulation (wgmma_primitives.h): a barrier and one
    // pointer slot per thread each
    std::unique_ptr<std::barrier<>> group_barrier[kMaxWarps / 4];
    const void* group_slots[kMaxWarps / 4][4 * kWarp];
};
inline Block* block = nullptr;

inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline dim3 block_dim, grid_dim;

// One collective step: lane `lane` of warp `warp` publishes `n` 64-bit words, and gets the
// slot table of that step (every lane's words) to read after the barrier.
inline uint64_t (*exchange(const uint64_t* mine, int n))[8] {
    const int t = (int)thread_idx.x, warp = t / kWarp, lane = t % kWarp;
    int& p = block->parity[warp][lane];
    uint64_t(*table)[8] = block->slots[warp][p];
    for (int i = 0; i < n; ++i) table[lane][i] = mine[i];
    p ^= 1;
    block->warp_barrier[warp]->arrive_and_wait();
    return table;
}

// The order of the blocks: a permutation per launch, drawn from the harness's seed
// (start_harness seeds it), so the block that finishes last, and the blocks that ran before any
// given one, change from launch to launch: the last-block ticket of grpo_loss.cu is taken by
// any block, and a block that read another's output without synchronising would see it only
// sometimes.
inline std::mt19937_64 block_order(0);
// the block `launch` is running, readable by its `before` and `after` on the calling thread
inline dim3 running_block;

// Runs `kernel` over the grid, one block at a time in a random order, each CUDA thread a
// std::thread; `before` and `after` (optional) run on the calling thread around every block.
inline void launch(dim3 grid, dim3 threads, const std::function<void()>& kernel,
                   const std::function<void()>& before = {},
                   const std::function<void()>& after = {}) {
    const unsigned n = threads.x * threads.y * threads.z;
    if (threads.y != 1 || threads.z != 1 || n % kWarp != 0 || n / kWarp > (unsigned)kMaxWarps) {
        std::fprintf(stderr, "emulation: blocks must be 1-D and whole warps\n");
        std::abort();
    }
    block_dim = threads;
    grid_dim = grid;
    std::vector<dim3> blocks;
    blocks.reserve((size_t)grid.x * grid.y * grid.z);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(dim3{x, y, z});
    std::shuffle(blocks.begin(), blocks.end(), block_order);
    for (const dim3 at : blocks) {
        const unsigned x = at.x, y = at.y, z = at.z;
        auto b = std::make_unique<Block>();
        b->block_barrier = std::make_unique<std::barrier<>>(n);
        for (unsigned w = 0; w < n / kWarp; ++w)
            b->warp_barrier[w] = std::make_unique<std::barrier<>>(kWarp);
        for (unsigned w = 0; w < n / (4 * kWarp); ++w)
            b->group_barrier[w] = std::make_unique<std::barrier<>>(4 * kWarp);
        std::memset(b->parity, 0, sizeof b->parity);
        block = b.get();
        running_block = at;
        if (before) before();
        std::vector<std::thread> pool;
        pool.reserve(n);
        for (unsigned t = 0; t < n; ++t)
            pool.emplace_back([&, t, x, y, z] {
                thread_idx = dim3{t, 0, 0};
                block_idx = dim3{x, y, z};
                kernel();
            });
        for (auto& th : pool) th.join();
        block = nullptr;
        if (after) after();
    }
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::block->block_barrier->arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask: every lane, as in the kernels*/, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8);
    uint64_t mine = 0;
    std::memcpy(&mine, &v, sizeof(T));
    auto table = emu::exchange(&mine, 1);
    const int lane = (int)(threadIdx.x % emu::kWarp);
    T out;
    std::memcpy(&out, &table[lane ^ lane_mask][0], sizeof(T));
    return out;
}

template <typename T>
inline T __shfl_sync(unsigned /*mask: every lane*/, T v, int src_lane) {
    static_assert(sizeof(T) <= 8);
    uint64_t mine = 0;
    std::memcpy(&mine, &v, sizeof(T));
    auto table = emu::exchange(&mine, 1);
    T out;
    std::memcpy(&out, &table[src_lane & (emu::kWarp - 1)][0], sizeof(T));
    return out;
}

inline bool __any_sync(unsigned /*mask: every lane*/, bool p) {
    const uint64_t mine = p;
    auto table = emu::exchange(&mine, 1);
    for (int l = 0; l < emu::kWarp; ++l)
        if (table[l][0]) return true;
    return false;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Atomics return the old value, as in CUDA.
template <typename T>
inline T atomicAdd(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (!a.compare_exchange_weak(old, old + v)) {
    }
    return old;
}
inline int atomicMin(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old > v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline unsigned atomicOr(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_or(v); }
// atomicInc: old ≥ limit wraps to 0, else old + 1; returns old.
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (!a.compare_exchange_weak(old, old >= limit ? 0u : old + 1)) {
    }
    return old;
}
// Blocks run one after another here, so a device-wide fence has nothing to order.
inline void __threadfence() {}
// a kernel's refusal of its launch: the emulated run stops here
inline void __trap() { std::abort(); }
// Likewise an L2-only load is a plain load.
template <typename T>
inline T __ldcg(const T* p) {
    return *p;
}
