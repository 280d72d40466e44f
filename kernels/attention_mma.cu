// Causal GQA self-attention on tensor cores ("attention v2"): FlashAttention-2 structure with
// bf16 `mma.sync.m16n8k16` (f32 accumulation). Layouts as in attention.cu: q/dO [B·T, Hq·hd]
// and k/v [B·T, Hkv·hd] row-major, here in bf16 (the host converts them once, round to nearest
// even, and keeps the copies on the buffers); out/dq/dk/dv f32 in the same layouts, lse
// [B, Hq, T] f32 natural log, scale 1/sqrt(hd). Scores, softmax statistics and every
// accumulator stay f32. The T×T matrix is never stored. δ = rowsum(dO∘O) for the backward
// comes from attention.cu's `attention_backward_delta`.
//
// Pipeline: the streamed tiles (K/V in the forward and dq kernels, Q/dO in dk/dv) are
// double-buffered in shared memory and fetched with `cp.async` (16 B per copy, zero-filled past
// T and head_dim), so the next tile's loads overlap this tile's MMAs. One tile per iteration:
//   barrier (every warp is done with the other slot) → issue the next tile into it → commit →
//   wait for all but the newest group (this tile) → barrier (its bytes visible to all) → MMAs.
// A head_dim that is not a multiple of 8 (or an unaligned buffer) takes a synchronous
// element-wise copy into the same slots, which the same barriers order.
//
// Head dims: each kernel exists for a padded width HDP ∈ {64, 128}; any head_dim ≤ HDP works, the
// columns past head_dim are staged as zeros (they add nothing to q·k and are never written).
//
// Warp tiling: every warp owns 16 rows of one m16n8k16 A operand (16 query rows in the forward
// and dq kernels, 16 keys in dk/dv). Fragment layouts (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), g = lane / 4, c = lane % 4:
//   A (16×16, 4 regs of bf16x2): reg j holds row g + 8·(j & 1), cols 2c + 8·(j >> 1) + {0, 1}
//   B (16×8, 2 regs):            reg j holds k rows 2c + 8·j + {0, 1}, column n = g
//   C (16×8, 4 f32):             c[i] is row g + 8·(i >> 1), col 2c + (i & 1)
// so a C tile of scores is already the A operand of the next product (P·V, dS·K) once packed to
// bf16, without going through shared memory.
#include "tensor_core_common.cuh"

#define MMA_THREADS 128  // 4 warps
#define MMA_BQ 64        // query rows per forward / dq block (16 per warp)
#define MMA_BK 64        // keys per staged tile (forward, dq) and per dk/dv block (16 per warp)
#define MMA_DKV_BQ 32    // query rows per tile streamed through a dk/dv block
#define MMA_SKEW 8       // bf16 pad per smem row: rows 16 B apart mod 128, ldmatrix conflict-free

#ifndef CADA_HOST_EMULATION
// The warp-collective primitives of mma.sync. (kernels/emulation/ replaces exactly these to run
// this file on the host and check its index math without a GPU.)

// Four 8×8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8 and receives
// row l / 4, cols 2(l % 4) + {0, 1} of each matrix in r[0..3].
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const uint16_t* row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// As ldsm_x4 but transposed: lane l receives rows 2(l % 4) + {0, 1}, col l / 4 of each matrix.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const uint16_t* row) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// c += A·B for one 16×8×16 tile.
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0,
                                         uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif

// ldmatrix row addresses, for a 16×16 block at (r0, c0) of a tile with row stride `ld`.
// A operand from a row-major [m][k] tile (also the B operand of X·V from a row-major [k][n] tile
// with .trans): matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
// (rows 8-15, cols 8-15) → regs 0..3 are A's regs 0..3, or B's (b0, b1) for n-tiles c0, c0 + 8.
__device__ __forceinline__ const uint16_t* addr_a(const uint16_t* t, int ld, int r0, int c0) {
    const int lane = threadIdx.x & 31;
    return t + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + c0 + (lane >> 4) * 8;
}
// B operand of X·Yᵀ from a row-major [n][k] tile (keys × dims): matrices (n 0-7, k 0-7),
// (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) → (b0, b1) of n-tile r0, then of r0 + 8.
__device__ __forceinline__ const uint16_t* addr_bt(const uint16_t* t, int ld, int r0, int c0) {
    const int lane = threadIdx.x & 31;
    return t + (r0 + (lane & 7) + (lane >> 4) * 8) * ld + c0 + ((lane >> 3) & 1) * 8;
}

// Stages rows [r0, r0 + ROWS) of one head (columns [col0, col0 + hd) of a [B·T, stride] bf16
// matrix, rows counted from `base` = b·T) into a ROWS × HDP tile of row stride HDP + MMA_SKEW.
// Rows ≥ seq and columns ≥ hd become zeros. With hd % 8 == 0 and a 16-byte aligned matrix every
// 8-column chunk is one cp.async (part of the caller's next commit group); otherwise the
// elements are copied synchronously. Either way the tile is ready after the caller's
// cp_async_wait and __syncthreads.
template <int ROWS, int HDP>
__device__ __forceinline__ void stage_tile(uint16_t* dst, const uint16_t* src, int64_t base,
                                           int r0, int seq, int64_t stride, int col0, int hd) {
    constexpr int C8 = HDP / 8;
    // hd % 8 == 0 makes stride, col0 and every chunk start multiples of 8 elements (16 bytes);
    // the matrix itself is checked in case it is an offset view
    const bool vec = (hd & 7) == 0 && ((uintptr_t)src & 15) == 0;
    for (int idx = threadIdx.x; idx < ROWS * C8; idx += MMA_THREADS) {
        const int r = idx / C8, c = (idx % C8) * 8;
        const int t = r0 + r;
        const bool in = t < seq && c < hd;
        const uint16_t* p = src + (in ? (base + t) * stride + col0 + c : 0);
        uint16_t* d = dst + r * (HDP + MMA_SKEW) + c;
        if (vec) {
            cp_async_16(d, p, in);
        } else {
            copy_chunk_zero_padded(d, p, in, c, hd);
        }
    }
}

// Forward. grid = (ceil(T / 64), Hq, B), 128 threads, dynamic smem 2·2·64·(HDP + 8) bf16
// (two slots of K and V). Warp w owns query rows q0 + 16w .. +15 and keeps Q as A fragments
// in registers; each key tile gives S = Q·Kᵀ (16 × 64 per warp), an online-softmax update, and
// O += P·V.
template <int HDP>
__device__ __forceinline__ void forward_body(float* out, float* lse, const uint16_t* q,
                                             const uint16_t* k, const uint16_t* v, AttnDims s,
                                             float scale) {
    constexpr int LD = HDP + MMA_SKEW, KS = HDP / 16, DN = HDP / 8, SN = MMA_BK / 8;
    constexpr int TILE = MMA_BK * LD;  // one K or V slot
    CADA_DYNAMIC_SMEM(uint4, attn_mma_smem);
    uint16_t* const kv_slots = reinterpret_cast<uint16_t*>(attn_mma_smem);  // K0 V0 K1 V1
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int q0 = blockIdx.x * MMA_BQ;
    const int w0 = q0 + warp * 16;                    // this warp's first row
    const int rows[2] = {w0 + g, w0 + g + 8};         // the two rows this thread's C regs hold
    const int wlast = w0 < s.seq ? w0 + 15 : -1;      // keys past it are masked for the warp
    const int last_key = min(s.seq - 1, q0 + MMA_BQ - 1);
    const float c2 = scale * LOG2E;                   // scores in log2 units: exp2f below

    const int tiles = last_key / MMA_BK + 1;          // q0 < T, so last_key ≥ 0
    auto stage_kv = [&](int tile, int slot) {
        uint16_t* sk = kv_slots + 2 * slot * TILE;
        stage_tile<MMA_BK, HDP>(sk, k, base, tile * MMA_BK, s.seq, ks, kh * hd, hd);
        stage_tile<MMA_BK, HDP>(sk + TILE, v, base, tile * MMA_BK, s.seq, ks, kh * hd, hd);
    };

    // Q goes through slot 1's K (key tile 1 overwrites it after the loop's first barrier),
    // while key tile 0 lands in slot 0.
    stage_tile<MMA_BQ, HDP>(kv_slots + 2 * TILE, q, base, q0, s.seq, qs, h * hd, hd);
    cp_async_commit();
    stage_kv(0, 0);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    uint32_t qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
        ldsm_x4(qf[kk], addr_a(kv_slots + 2 * TILE, LD, warp * 16, kk * 16));

    float o[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.f, 0.f};  // l: this thread's part

    for (int it = 0; it < tiles; ++it) {
        const int k0 = it * MMA_BK;
        __syncthreads();  // every warp is done with the other slot (tile it - 1, or Q)
        if (it + 1 < tiles) stage_kv(it + 1, (it + 1) & 1);
        cp_async_commit();  // possibly empty: the wait below then always means "tile it"
        cp_async_wait<1>();
        __syncthreads();
        const uint16_t* sk = kv_slots + 2 * (it & 1) * TILE;
        const uint16_t* sv = sk + TILE;
        float sc[SN][4];
#pragma unroll
        for (int n = 0; n < SN; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
        for (int nn = 0; nn < MMA_BK / 16; ++nn) {
            if (k0 + nn * 16 > wlast) continue;  // all above the diagonal, or no row < T (uniform)
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                uint32_t kb[4];
                ldsm_x4(kb, addr_bt(sk, LD, nn * 16, kk * 16));
                mma_bf16(sc[2 * nn], qf[kk], kb[0], kb[1]);
                mma_bf16(sc[2 * nn + 1], qf[kk], kb[2], kb[3]);
            }
        }
        online_softmax_tile(sc, o, m, l, k0, rows, c, c2);
        // O += P·V: the score C tiles 2j, 2j + 1 are the A operand for keys 16j .. 16j + 15.
#pragma unroll
        for (int j = 0; j < MMA_BK / 16; ++j) {
            if (k0 + j * 16 > wlast) continue;  // P is zero there (or never written)
            const uint32_t pa[4] = {pack_bf16(sc[2 * j][0], sc[2 * j][1]),
                                    pack_bf16(sc[2 * j][2], sc[2 * j][3]),
                                    pack_bf16(sc[2 * j + 1][0], sc[2 * j + 1][1]),
                                    pack_bf16(sc[2 * j + 1][2], sc[2 * j + 1][3])};
#pragma unroll
            for (int dn = 0; dn < HDP / 16; ++dn) {
                uint32_t vb[4];
                ldsm_x4_trans(vb, addr_a(sv, LD, j * 16, dn * 16));
                mma_bf16(o[2 * dn], pa, vb[0], vb[1]);
                mma_bf16(o[2 * dn + 1], pa, vb[2], vb[3]);
            }
        }
    }
    write_forward_rows(out, lse, o, m, l, rows, s, base, b, h, c);
}

// Backward, dq. grid = (ceil(T / 64), Hq, B), 128 threads, dynamic smem 6·64·(HDP + 8) bf16
// (Q, dO, two slots of K and V). P = exp(q·k·scale − lse) is recomputed, dS = P∘(dO·Vᵀ − δ),
// and dq = scale · dS·K accumulates in registers and is written once: no atomics.
template <int HDP>
__device__ __forceinline__ void dq_body(float* dq, const uint16_t* dout, const uint16_t* q,
                                        const uint16_t* k, const uint16_t* v, const float* lse,
                                        const float* delta, AttnDims s, float scale) {
    constexpr int LD = HDP + MMA_SKEW, KS = HDP / 16, DN = HDP / 8, SN = MMA_BK / 8;
    constexpr int TILE = MMA_BK * LD;  // one K or V slot (MMA_BQ == MMA_BK rows)
    CADA_DYNAMIC_SMEM(uint4, attn_mma_smem);
    uint16_t* sq = reinterpret_cast<uint16_t*>(attn_mma_smem);
    uint16_t* sdo = sq + MMA_BQ * LD;
    uint16_t* const kv_slots = sdo + MMA_BQ * LD;  // K0 V0 K1 V1
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int q0 = blockIdx.x * MMA_BQ;
    const int w0 = q0 + warp * 16;
    const int rows[2] = {w0 + g, w0 + g + 8};
    const int wlast = w0 < s.seq ? w0 + 15 : -1;
    const int last_key = min(s.seq - 1, q0 + MMA_BQ - 1);
    const float c2 = scale * LOG2E;
    float lse2[2], dlt[2];
    load_row_stats(lse2, dlt, lse, delta, rows, s, b, h);
    const int tiles = last_key / MMA_BK + 1;
    auto stage_kv = [&](int tile, int slot) {
        uint16_t* sk = kv_slots + 2 * slot * TILE;
        stage_tile<MMA_BK, HDP>(sk, k, base, tile * MMA_BK, s.seq, ks, kh * hd, hd);
        stage_tile<MMA_BK, HDP>(sk + TILE, v, base, tile * MMA_BK, s.seq, ks, kh * hd, hd);
    };
    // Q, dO and key tile 0 in one group
    stage_tile<MMA_BQ, HDP>(sq, q, base, q0, s.seq, qs, h * hd, hd);
    stage_tile<MMA_BQ, HDP>(sdo, dout, base, q0, s.seq, qs, h * hd, hd);
    stage_kv(0, 0);
    cp_async_commit();
    float acc[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (int it = 0; it < tiles; ++it) {
        const int k0 = it * MMA_BK;
        __syncthreads();  // every warp is done with the other slot (tile it - 1)
        if (it + 1 < tiles) stage_kv(it + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const uint16_t* sk = kv_slots + 2 * (it & 1) * TILE;
        const uint16_t* sv = sk + TILE;
        float sc[SN][4], dp[SN][4];
#pragma unroll
        for (int n = 0; n < SN; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) sc[n][i] = dp[n][i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            uint32_t qa[4], da[4];
            ldsm_x4(qa, addr_a(sq, LD, warp * 16, kk * 16));
            ldsm_x4(da, addr_a(sdo, LD, warp * 16, kk * 16));
#pragma unroll
            for (int nn = 0; nn < MMA_BK / 16; ++nn) {
                if (k0 + nn * 16 > wlast) continue;
                uint32_t kb[4], vb[4];
                ldsm_x4(kb, addr_bt(sk, LD, nn * 16, kk * 16));
                ldsm_x4(vb, addr_bt(sv, LD, nn * 16, kk * 16));
                mma_bf16(sc[2 * nn], qa, kb[0], kb[1]);
                mma_bf16(sc[2 * nn + 1], qa, kb[2], kb[3]);
                mma_bf16(dp[2 * nn], da, vb[0], vb[1]);
                mma_bf16(dp[2 * nn + 1], da, vb[2], vb[3]);
            }
        }
        score_grads_by_row(sc, dp, k0, rows, c, c2, lse2, dlt);
        // dq += dS·K: K [key][dim] is the row-major [k][n] B operand, read with .trans.
#pragma unroll
        for (int j = 0; j < MMA_BK / 16; ++j) {
            if (k0 + j * 16 > wlast) continue;
            const uint32_t da[4] = {pack_bf16(sc[2 * j][0], sc[2 * j][1]),
                                    pack_bf16(sc[2 * j][2], sc[2 * j][3]),
                                    pack_bf16(sc[2 * j + 1][0], sc[2 * j + 1][1]),
                                    pack_bf16(sc[2 * j + 1][2], sc[2 * j + 1][3])};
#pragma unroll
            for (int dn = 0; dn < HDP / 16; ++dn) {
                uint32_t kb[4];
                ldsm_x4_trans(kb, addr_a(sk, LD, j * 16, dn * 16));
                mma_bf16(acc[2 * dn], da, kb[0], kb[1]);
                mma_bf16(acc[2 * dn + 1], da, kb[2], kb[3]);
            }
        }
    }
    write_dq_rows(dq, acc, rows, s, base, h, c, scale);
}

// Backward, dk and dv. grid = (ceil(T / 64), Hkv, B), 128 threads, dynamic smem
// (2·64 + 2·2·32)·(HDP + 8) bf16 + 2·2·32 f32 (K, V, two slots of Q, dO, lse, δ). Warp w owns
// keys k0 + 16w .. +15; tiles of 32 query rows of every head of the GQA group stream through,
// from the key tile's diagonal to T. Per warp: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (16 × 32), Pᵀ from
// lse, dSᵀ = Pᵀ∘(dPᵀ − δ), dv += Pᵀ·dO, dk += dSᵀ·Q. Each key belongs to one warp of one
// block: no atomics.
template <int HDP>
__device__ __forceinline__ void dkv_body(float* dk, float* dv, const uint16_t* dout,
                                         const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                         const float* lse, const float* delta, AttnDims s,
                                         float scale) {
    constexpr int LD = HDP + MMA_SKEW, KS = HDP / 16, DN = HDP / 8, SN = MMA_DKV_BQ / 8;
    constexpr int QTILE = MMA_DKV_BQ * LD;  // one Q or dO slot
    CADA_DYNAMIC_SMEM(uint4, attn_mma_smem);
    uint16_t* sk = reinterpret_cast<uint16_t*>(attn_mma_smem);
    uint16_t* sv = sk + MMA_BK * LD;
    uint16_t* const q_slots = sv + MMA_BK * LD;  // Q0 dO0 Q1 dO1
    float* const stat_slots = reinterpret_cast<float*>(q_slots + 4 * QTILE);  // lse0 δ0 lse1 δ1
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, kh = blockIdx.y, group = s.n_heads / s.n_kv_heads;
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int k0 = blockIdx.x * MMA_BK;
    const int w0 = k0 + warp * 16;                // this warp's first key
    const int keys[2] = {w0 + g, w0 + g + 8};
    const float c2 = scale * LOG2E;
    // the query tiles, head by head of the group: tile i is head kh·group + i / per_head, rows
    // from k0 + (i % per_head)·32
    const int per_head = (s.seq - k0 + MMA_DKV_BQ - 1) / MMA_DKV_BQ;  // k0 < T
    const int tiles = group * per_head;
    auto stage_q = [&](int tile, int slot) {
        const int h = kh * group + tile / per_head;
        const int t0 = k0 + (tile % per_head) * MMA_DKV_BQ;
        uint16_t* sq = q_slots + 2 * slot * QTILE;
        stage_tile<MMA_DKV_BQ, HDP>(sq, q, base, t0, s.seq, qs, h * hd, hd);
        stage_tile<MMA_DKV_BQ, HDP>(sq + QTILE, dout, base, t0, s.seq, qs, h * hd, hd);
        // lse and δ of the tile's rows ride in the same commit group (4-byte copies, 0 past T),
        // so no warp stalls on a global load here; lse is turned into log2 units where used
        if (threadIdx.x < MMA_DKV_BQ) {
            float* st = stat_slots + 2 * slot * MMA_DKV_BQ;
            const int t = t0 + threadIdx.x;
            const int64_t at = t < s.seq ? ((int64_t)b * s.n_heads + h) * s.seq + t : 0;
            cp_async_4(st + threadIdx.x, lse + at, t < s.seq);
            cp_async_4(st + MMA_DKV_BQ + threadIdx.x, delta + at, t < s.seq);
        }
    };
    // K, V and query tile 0 in one group
    stage_tile<MMA_BK, HDP>(sk, k, base, k0, s.seq, ks, kh * hd, hd);
    stage_tile<MMA_BK, HDP>(sv, v, base, k0, s.seq, ks, kh * hd, hd);
    stage_q(0, 0);
    cp_async_commit();
    float gk[DN][4], gv[DN][4];
#pragma unroll
    for (int n = 0; n < DN; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) gk[n][i] = gv[n][i] = 0.f;

    for (int it = 0; it < tiles; ++it) {
        const int t0 = k0 + (it % per_head) * MMA_DKV_BQ;
        __syncthreads();  // every warp is done with the other slot (tile it - 1)
        if (it + 1 < tiles) stage_q(it + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const uint16_t* sq = q_slots + 2 * (it & 1) * QTILE;
        const uint16_t* sdo = sq + QTILE;
        const float* slse = stat_slots + 2 * (it & 1) * MMA_DKV_BQ;
        const float* sdlt = slse + MMA_DKV_BQ;
        // warp-uniform: every query precedes every key of the warp, or no key is < T
        if (t0 + MMA_DKV_BQ - 1 < w0 || w0 >= s.seq) continue;
        float st[SN][4], dpt[SN][4];
#pragma unroll
        for (int n = 0; n < SN; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) st[n][i] = dpt[n][i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            uint32_t ka[4], va[4];
            ldsm_x4(ka, addr_a(sk, LD, warp * 16, kk * 16));
            ldsm_x4(va, addr_a(sv, LD, warp * 16, kk * 16));
#pragma unroll
            for (int nn = 0; nn < MMA_DKV_BQ / 16; ++nn) {
                uint32_t qb[4], db[4];
                ldsm_x4(qb, addr_bt(sq, LD, nn * 16, kk * 16));
                ldsm_x4(db, addr_bt(sdo, LD, nn * 16, kk * 16));
                mma_bf16(st[2 * nn], ka, qb[0], qb[1]);
                mma_bf16(st[2 * nn + 1], ka, qb[2], qb[3]);
                mma_bf16(dpt[2 * nn], va, db[0], db[1]);
                mma_bf16(dpt[2 * nn + 1], va, db[2], db[3]);
            }
        }
        score_grads_by_key(st, dpt, t0, keys, c, c2, slse, sdlt, s.seq);
        // dv += Pᵀ·dO and dk += dSᵀ·Q over the tile's queries, 16 at a time.
#pragma unroll
        for (int j = 0; j < MMA_DKV_BQ / 16; ++j) {
            const uint32_t pa[4] = {pack_bf16(st[2 * j][0], st[2 * j][1]),
                                    pack_bf16(st[2 * j][2], st[2 * j][3]),
                                    pack_bf16(st[2 * j + 1][0], st[2 * j + 1][1]),
                                    pack_bf16(st[2 * j + 1][2], st[2 * j + 1][3])};
            const uint32_t sa[4] = {pack_bf16(dpt[2 * j][0], dpt[2 * j][1]),
                                    pack_bf16(dpt[2 * j][2], dpt[2 * j][3]),
                                    pack_bf16(dpt[2 * j + 1][0], dpt[2 * j + 1][1]),
                                    pack_bf16(dpt[2 * j + 1][2], dpt[2 * j + 1][3])};
#pragma unroll
            for (int dn = 0; dn < HDP / 16; ++dn) {
                uint32_t db[4], qb[4];
                ldsm_x4_trans(db, addr_a(sdo, LD, j * 16, dn * 16));
                ldsm_x4_trans(qb, addr_a(sq, LD, j * 16, dn * 16));
                mma_bf16(gv[2 * dn], pa, db[0], db[1]);
                mma_bf16(gv[2 * dn + 1], pa, db[2], db[3]);
                mma_bf16(gk[2 * dn], sa, qb[0], qb[1]);
                mma_bf16(gk[2 * dn + 1], sa, qb[2], qb[3]);
            }
        }
    }
    write_dkv_rows(dk, dv, gk, gv, keys, s, base, kh, c, scale);
}

// One entry point per padded head width; the host picks hd64 for head_dim ≤ 64, else hd128.
// q, k, v and dout are bf16 (passed as their 16-bit patterns), every output and lse/δ f32.
#define ATTN_MMA_KERNELS(HDP)                                                                  \
    CADA_KERNEL void __launch_bounds__(MMA_THREADS)                                            \
        attention_mma_forward_hd##HDP(float* out, float* lse, const uint16_t* q,               \
                                      const uint16_t* k, const uint16_t* v, AttnDims s,        \
                                      float scale) {                                           \
        forward_body<HDP>(out, lse, q, k, v, s, scale);                                        \
    }                                                                                          \
    CADA_KERNEL void __launch_bounds__(MMA_THREADS) attention_mma_backward_dq_hd##HDP(         \
        float* dq, const uint16_t* dout, const uint16_t* q, const uint16_t* k,                 \
        const uint16_t* v, const float* lse, const float* delta, AttnDims s, float scale) {    \
        dq_body<HDP>(dq, dout, q, k, v, lse, delta, s, scale);                                 \
    }                                                                                          \
    CADA_KERNEL void __launch_bounds__(MMA_THREADS) attention_mma_backward_dkv_hd##HDP(        \
        float* dk, float* dv, const uint16_t* dout, const uint16_t* q, const uint16_t* k,      \
        const uint16_t* v, const float* lse, const float* delta, AttnDims s, float scale) {    \
        dkv_body<HDP>(dk, dv, dout, q, k, v, lse, delta, s, scale);                            \
    }

ATTN_MMA_KERNELS(64)
ATTN_MMA_KERNELS(128)
