// Causal GQA self-attention on Hopper's warpgroup MMA ("attention v3", sm_90a only): forward
// and backward with `wgmma.mma_async` bf16 → f32 (wgmma.cuh), the operands of every product
// read by the tensor cores from shared memory through matrix descriptors or, for the
// probabilities and score gradients, straight from the registers that computed them. Same
// buffers, layouts, scale and `lse` as attention_mma.cu (mma.sync), so either's forward pairs
// with either's backward; δ = rowsum(dO∘O) comes from attention.cu's `attention_backward_delta`.
//
// Every block is two warpgroups (256 threads); a warpgroup owns one m64 row block (64 query
// rows in the forward and dq kernels, 64 keys in dk/dv), and its accumulators hold, per warp,
// mma.sync's C-tile layout, so the online softmax and epilogue are tensor_core_common.cuh's.
// Tiles stream through double-buffered slots by cp.async (zero-filled past T and head_dim) in
// the no-swizzle core-matrix layout; per tile: barrier → issue the next tile → wait for this
// one → `fence.proxy.async` (the copies become visible to the tensor cores) → barrier →
// MMAs. A tile wholly above a warpgroup's diagonal is skipped by that warpgroup (uniformly,
// as wgmma requires). Each group of MMAs is waited for at once: no softmax/MMA overlap, no
// producer warps, no TMA or swizzled tiles yet (FA3's; they want a GPU to time them).
//
// Built only into the sm_90a cubin (wgmma exists nowhere else); the compute_80 PTX gets bodies
// that trap, and the host selects these kernels only on a 9.0 device.
#include "wgmma.cuh"

#define WGMMA_THREADS 256  // two warpgroups
#define WGMMA_BQ 128       // query rows per forward / dq block (64 per warpgroup)
#define WGMMA_BK 64        // keys per tile streamed through a forward / dq block
#define WGMMA_DKV_BK 128   // keys per dk/dv block (64 per warpgroup)
#define WGMMA_DKV_BQ 64    // query rows per tile streamed through a dk/dv block

// Key tile r0 .. r0 + 63 of kv head kh: K into `slot`, V right after it (one commit group's
// worth of copies, in the forward and dq kernels).
template <int HDP>
__device__ __forceinline__ void stage_kv_tile(uint16_t* slot, const uint16_t* k, const uint16_t* v,
                                              int64_t base, int r0, AttnDims s, int kh) {
    const int hd = s.head_dim;
    const int64_t ks = (int64_t)s.n_kv_heads * hd;
    stage_core_matrices<WGMMA_BK, HDP, WGMMA_THREADS>(slot, k, base, r0, s.seq, ks, kh * hd, hd);
    stage_core_matrices<WGMMA_BK, HDP, WGMMA_THREADS>(slot + WGMMA_BK * HDP, v, base, r0, s.seq,
                                                      ks, kh * hd, hd);
}

// Forward. grid = (ceil(T / 128), Hq, B), dynamic smem (128 + 4·64)·HDP bf16: Q, then two
// slots of (K, V). Per key tile: S = Q·Kᵀ, the online softmax, O += P·V.
template <int HDP>
__device__ __forceinline__ void wgmma_forward_body(float* out, float* lse, const uint16_t* q,
                                                   const uint16_t* k, const uint16_t* v,
                                                   AttnDims s, float scale) {
#ifdef CADA_HAS_WGMMA
    constexpr int DN = HDP / 8, KV_TILE = WGMMA_BK * HDP;
    CADA_DYNAMIC_SMEM(uint4, attn_wgmma_smem);
    uint16_t* const sq = reinterpret_cast<uint16_t*>(attn_wgmma_smem);
    uint16_t* const kv_slots = sq + WGMMA_BQ * HDP;  // K0 V0 K1 V1
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int q0 = blockIdx.x * WGMMA_BQ;
    const int g0 = q0 + wg * 64;                          // this warpgroup's first row
    const int rows[2] = {g0 + warp * 16 + g, g0 + warp * 16 + g + 8};
    const int glast = g0 < s.seq ? g0 + 63 : -1;          // keys past it are masked for the group
    const int last_key = min(s.seq - 1, q0 + WGMMA_BQ - 1);
    const int tiles = last_key / WGMMA_BK + 1;            // q0 < T, so last_key ≥ 0
    const float c2 = scale * LOG2E;
    auto stage_kv = [&](int tile, int slot) {
        stage_kv_tile<HDP>(kv_slots + 2 * slot * KV_TILE, k, v, base, tile * WGMMA_BK, s, kh);
    };
    stage_core_matrices<WGMMA_BQ, HDP, WGMMA_THREADS>(sq, q, base, q0, s.seq, qs, h * hd, hd);
    stage_kv(0, 0);
    cp_async_commit();

    float o[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};  // l: this thread's part
    const uint16_t* const my_q = sq + wg * 64 * HDP;                 // 8 row blocks per group

    for (int it = 0; it < tiles; ++it) {
        const int k0 = it * WGMMA_BK;
        __syncthreads();  // both warpgroups are done with the other slot (tile it - 1)
        if (it + 1 < tiles) stage_kv(it + 1, (it + 1) & 1);
        cp_async_commit();  // possibly empty: the wait below then always means "tile it"
        cp_async_wait<1>();
        fence_proxy_async();
        __syncthreads();
        if (k0 > glast) continue;  // the tile is above this group's diagonal (uniform)
        const uint16_t* sk = kv_slots + 2 * (it & 1) * KV_TILE;
        float sc[8][4];  // the first MMA overwrites it (scale-d = 0)
        wgmma_fence();
        mma_rows_by_rows<HDP>(sc, my_q, sk);
        wgmma_commit();
        wgmma_wait<0>();
        pin_accumulator(sc);
        online_softmax_tile(sc, o, m, l, k0, rows, c, c2);
        uint32_t pa[4][4];  // P as A fragments (exactly 0 above the diagonal)
        pack_a_fragments(pa, sc);
        pin_accumulator(o);
        pin_registers(*reinterpret_cast<uint32_t(*)[16]>(&pa));
        wgmma_fence();  // o was rescaled and pa written: both are read by the MMAs below
        mma_regs_by_tile<HDP>(o, pa, sk + KV_TILE);
        wgmma_commit();
        wgmma_wait<0>();
        pin_accumulator(o);
    }
    write_forward_rows(out, lse, o, m, l, rows, s, base, b, h, c);
#else
    __trap();  // the compute_80 PTX: no wgmma before sm_90a (the host never launches this there)
#endif
}

// Backward, dq. grid = (ceil(T / 128), Hq, B), dynamic smem (2·128 + 4·64)·HDP bf16: Q, dO,
// two slots of (K, V). Per key tile: S = Q·Kᵀ and dP = dO·Vᵀ, P = exp(S·scale − lse) from the
// forward's lse, dS = P∘(dP − δ), dq += dS·K in registers, written once: no atomics.
template <int HDP>
__device__ __forceinline__ void wgmma_dq_body(float* dq, const uint16_t* dout, const uint16_t* q,
                                              const uint16_t* k, const uint16_t* v,
                                              const float* lse, const float* delta, AttnDims s,
                                              float scale) {
#ifdef CADA_HAS_WGMMA
    constexpr int DN = HDP / 8, KV_TILE = WGMMA_BK * HDP;
    CADA_DYNAMIC_SMEM(uint4, attn_wgmma_smem);
    uint16_t* const sq = reinterpret_cast<uint16_t*>(attn_wgmma_smem);
    uint16_t* const sdo = sq + WGMMA_BQ * HDP;
    uint16_t* const kv_slots = sdo + WGMMA_BQ * HDP;  // K0 V0 K1 V1
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int q0 = blockIdx.x * WGMMA_BQ;
    const int g0 = q0 + wg * 64;
    const int rows[2] = {g0 + warp * 16 + g, g0 + warp * 16 + g + 8};
    const int glast = g0 < s.seq ? g0 + 63 : -1;
    const int last_key = min(s.seq - 1, q0 + WGMMA_BQ - 1);
    const int tiles = last_key / WGMMA_BK + 1;
    const float c2 = scale * LOG2E;
    float lse2[2], dlt[2];
    load_row_stats(lse2, dlt, lse, delta, rows, s, b, h);
    auto stage_kv = [&](int tile, int slot) {
        stage_kv_tile<HDP>(kv_slots + 2 * slot * KV_TILE, k, v, base, tile * WGMMA_BK, s, kh);
    };
    // Q, dO and key tile 0 in one group
    stage_core_matrices<WGMMA_BQ, HDP, WGMMA_THREADS>(sq, q, base, q0, s.seq, qs, h * hd, hd);
    stage_core_matrices<WGMMA_BQ, HDP, WGMMA_THREADS>(sdo, dout, base, q0, s.seq, qs, h * hd, hd);
    stage_kv(0, 0);
    cp_async_commit();
    float acc[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    const uint16_t* const my_q = sq + wg * 64 * HDP;
    const uint16_t* const my_do = sdo + wg * 64 * HDP;

    for (int it = 0; it < tiles; ++it) {
        const int k0 = it * WGMMA_BK;
        __syncthreads();  // both warpgroups are done with the other slot (tile it - 1)
        if (it + 1 < tiles) stage_kv(it + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        fence_proxy_async();
        __syncthreads();
        if (k0 > glast) continue;  // above this group's diagonal (uniform)
        const uint16_t* sk = kv_slots + 2 * (it & 1) * KV_TILE;
        const uint16_t* sv = sk + KV_TILE;
        float sc[8][4], dp[8][4];
        wgmma_fence();
        mma_rows_by_rows<HDP>(sc, my_q, sk);
        mma_rows_by_rows<HDP>(dp, my_do, sv);
        wgmma_commit();
        wgmma_wait<0>();
        pin_accumulator(sc);
        pin_accumulator(dp);
        score_grads_by_row(sc, dp, k0, rows, c, c2, lse2, dlt);
        uint32_t da[4][4];
        pack_a_fragments(da, sc);
        pin_accumulator(acc);
        pin_registers(*reinterpret_cast<uint32_t(*)[16]>(&da));
        wgmma_fence();
        mma_regs_by_tile<HDP>(acc, da, sk);  // dq += dS·K, K read N-major
        wgmma_commit();
        wgmma_wait<0>();
        pin_accumulator(acc);
    }
    write_dq_rows(dq, acc, rows, s, base, h, c, scale);
#else
    __trap();
#endif
}

// Backward, dk and dv. grid = (ceil(T / 128), Hkv, B), dynamic smem (2·128 + 4·64)·HDP bf16 +
// 4·64 f32: K, V, two slots of (Q, dO) and of (lse, δ). Warpgroup w owns keys k0 + 64w .. +63;
// tiles of 64 query rows of every head of the GQA group stream through, from the block's first
// key to T. Per tile: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, Pᵀ from lse, dSᵀ = Pᵀ∘(dPᵀ − δ), dv += Pᵀ·dO,
// dk += dSᵀ·Q. Each key belongs to one warpgroup of one block: no atomics.
template <int HDP>
__device__ __forceinline__ void wgmma_dkv_body(float* dk, float* dv, const uint16_t* dout,
                                               const uint16_t* q, const uint16_t* k,
                                               const uint16_t* v, const float* lse,
                                               const float* delta, AttnDims s, float scale) {
#ifdef CADA_HAS_WGMMA
    constexpr int DN = HDP / 8, Q_TILE = WGMMA_DKV_BQ * HDP;
    CADA_DYNAMIC_SMEM(uint4, attn_wgmma_smem);
    uint16_t* const sk = reinterpret_cast<uint16_t*>(attn_wgmma_smem);
    uint16_t* const sv = sk + WGMMA_DKV_BK * HDP;
    uint16_t* const q_slots = sv + WGMMA_DKV_BK * HDP;  // Q0 dO0 Q1 dO1
    float* const stat_slots = reinterpret_cast<float*>(q_slots + 4 * Q_TILE);  // lse0 δ0 lse1 δ1
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, kh = blockIdx.y, group = s.n_heads / s.n_kv_heads;
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int k0 = blockIdx.x * WGMMA_DKV_BK;
    const int g0 = k0 + wg * 64;  // this warpgroup's first key
    const int keys[2] = {g0 + warp * 16 + g, g0 + warp * 16 + g + 8};
    const float c2 = scale * LOG2E;
    // the query tiles, head by head of the group: tile i is head kh·group + i / per_head, rows
    // from k0 + (i % per_head)·64
    const int per_head = (s.seq - k0 + WGMMA_DKV_BQ - 1) / WGMMA_DKV_BQ;  // k0 < T
    const int tiles = group * per_head;
    auto stage_q = [&](int tile, int slot) {
        const int h = kh * group + tile / per_head;
        const int t0 = k0 + (tile % per_head) * WGMMA_DKV_BQ;
        uint16_t* sq = q_slots + 2 * slot * Q_TILE;
        stage_core_matrices<WGMMA_DKV_BQ, HDP, WGMMA_THREADS>(sq, q, base, t0, s.seq, qs, h * hd,
                                                              hd);
        stage_core_matrices<WGMMA_DKV_BQ, HDP, WGMMA_THREADS>(sq + Q_TILE, dout, base, t0, s.seq,
                                                              qs, h * hd, hd);
        // lse and δ of the tile's rows ride in the same commit group (0 past T)
        if (threadIdx.x < WGMMA_DKV_BQ) {
            float* st = stat_slots + 2 * slot * WGMMA_DKV_BQ;
            const int t = t0 + threadIdx.x;
            const int64_t at = t < s.seq ? ((int64_t)b * s.n_heads + h) * s.seq + t : 0;
            cp_async_4(st + threadIdx.x, lse + at, t < s.seq);
            cp_async_4(st + WGMMA_DKV_BQ + threadIdx.x, delta + at, t < s.seq);
        }
    };
    // K, V and query tile 0 in one group
    stage_core_matrices<WGMMA_DKV_BK, HDP, WGMMA_THREADS>(sk, k, base, k0, s.seq, ks, kh * hd, hd);
    stage_core_matrices<WGMMA_DKV_BK, HDP, WGMMA_THREADS>(sv, v, base, k0, s.seq, ks, kh * hd, hd);
    stage_q(0, 0);
    cp_async_commit();
    float gk[DN][4], gv[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) gk[n][i] = gv[n][i] = 0.f;
    const uint16_t* const my_k = sk + wg * 64 * HDP;
    const uint16_t* const my_v = sv + wg * 64 * HDP;

    for (int it = 0; it < tiles; ++it) {
        const int t0 = k0 + (it % per_head) * WGMMA_DKV_BQ;
        __syncthreads();  // both warpgroups are done with the other slot (tile it - 1)
        if (it + 1 < tiles) stage_q(it + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        fence_proxy_async();
        __syncthreads();
        // uniform: every query of the tile precedes every key of the group, or no key is < T
        if (t0 + WGMMA_DKV_BQ - 1 < g0 || g0 >= s.seq) continue;
        const uint16_t* sq = q_slots + 2 * (it & 1) * Q_TILE;
        const uint16_t* sdo = sq + Q_TILE;
        const float* slse = stat_slots + 2 * (it & 1) * WGMMA_DKV_BQ;
        const float* sdlt = slse + WGMMA_DKV_BQ;
        float st[8][4], dpt[8][4];
        wgmma_fence();
        mma_rows_by_rows<HDP>(st, my_k, sq);
        mma_rows_by_rows<HDP>(dpt, my_v, sdo);
        wgmma_commit();
        wgmma_wait<0>();
        pin_accumulator(st);
        pin_accumulator(dpt);
        score_grads_by_key(st, dpt, t0, keys, c, c2, slse, sdlt, s.seq);
        uint32_t pa[4][4], sa[4][4];
        pack_a_fragments(pa, st);
        pack_a_fragments(sa, dpt);
        pin_accumulator(gv);
        pin_accumulator(gk);
        pin_registers(*reinterpret_cast<uint32_t(*)[16]>(&pa));
        pin_registers(*reinterpret_cast<uint32_t(*)[16]>(&sa));
        wgmma_fence();
        mma_regs_by_tile<HDP>(gv, pa, sdo);  // dv += Pᵀ·dO
        mma_regs_by_tile<HDP>(gk, sa, sq);   // dk += dSᵀ·Q
        wgmma_commit();
        wgmma_wait<0>();
        pin_accumulator(gv);
        pin_accumulator(gk);
    }
    write_dkv_rows(dk, dv, gk, gv, keys, s, base, kh, c, scale);
#else
    __trap();
#endif
}

// One entry point per padded head width; the host picks hd64 for head_dim ≤ 64, else hd128.
// q, k, v and dout are bf16 (passed as their 16-bit patterns), every output and lse/δ f32.
// One block per SM's worth of registers: the dk/dv accumulators alone are HDP floats a thread.
#define ATTN_WGMMA_KERNELS(HDP)                                                                \
    CADA_KERNEL void __launch_bounds__(WGMMA_THREADS, 1)                                       \
        attention_wgmma_forward_hd##HDP(float* out, float* lse, const uint16_t* q,             \
                                        const uint16_t* k, const uint16_t* v, AttnDims s,      \
                                        float scale) {                                         \
        wgmma_forward_body<HDP>(out, lse, q, k, v, s, scale);                                  \
    }                                                                                          \
    CADA_KERNEL void __launch_bounds__(WGMMA_THREADS, 1) attention_wgmma_backward_dq_hd##HDP( \
        float* dq, const uint16_t* dout, const uint16_t* q, const uint16_t* k,                 \
        const uint16_t* v, const float* lse, const float* delta, AttnDims s, float scale) {    \
        wgmma_dq_body<HDP>(dq, dout, q, k, v, lse, delta, s, scale);                           \
    }                                                                                          \
    CADA_KERNEL void __launch_bounds__(WGMMA_THREADS, 1) attention_wgmma_backward_dkv_hd##HDP( \
        float* dk, float* dv, const uint16_t* dout, const uint16_t* q, const uint16_t* k,      \
        const uint16_t* v, const float* lse, const float* delta, AttnDims s, float scale) {    \
        wgmma_dkv_body<HDP>(dk, dv, dout, q, k, v, lse, delta, s, scale);                      \
    }

ATTN_WGMMA_KERNELS(64)
ATTN_WGMMA_KERNELS(128)
