// Shared by the tensor-core attentions (attention_mma.cu: mma.sync; attention_wgmma.cu: Hopper's
// wgmma): the shape struct, bf16 packing, the cp.async copies and the quad reductions over the
// four lanes that hold one row of an MMA accumulator. kernels/emulation/warp_primitives.h
// replaces the primitives under `#ifndef CADA_HOST_EMULATION` to run the kernels on the host.
#pragma once
#include "common.cuh"
#ifndef CADA_HOST_EMULATION
#include <cuda_bf16.h>
#endif

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

struct AttnDims {
    int batch, seq, n_heads, n_kv_heads, head_dim;
};

// The synchronous fallback of the tile stagers (a head_dim not a multiple of 8, or an
// unaligned matrix): columns col .. col + 7 of one row from p into 16 bytes at d, those ≥ hd
// (and all of them when !in) as zeros.
__device__ __forceinline__ void copy_chunk_zero_padded(uint16_t* d, const uint16_t* p, bool in,
                                                       int col, int hd) {
    uint32_t w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const uint32_t lo = in && col + 2 * e < hd ? p[2 * e] : 0;
        const uint32_t hi = in && col + 2 * e + 1 < hd ? p[2 * e + 1] : 0;
        w[e] = lo | (hi << 16);
    }
    *reinterpret_cast<uint4*>(d) = make_uint4(w[0], w[1], w[2], w[3]);
}

#ifndef CADA_HOST_EMULATION
// Two f32 → one bf16x2 register, `lo` in the low half (the lower column / k index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// 16 bytes global → shared, asynchronously; `valid` false writes 16 zero bytes and reads
// nothing (src-size 0). .cg: the tiles are re-read by other blocks through L2, not L1.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// 4 bytes global → shared (.ca: the only cp.async size below 16 B); `valid` false writes zero.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(a), "l"(gmem),
                 "r"(valid ? 4 : 0)
                 : "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One key tile of the causal online softmax, on S as MMA accumulators hold it (mma.sync's C
// tiles and wgmma's D fragment share this layout): this thread holds rows rows[0], rows[1] and,
// of each 8-key tile n, keys k0 + 8n + 2c + {0, 1} in sc[n][0..1] (row 0) and sc[n][2..3]
// (row 1). Masks keys above the diagonal (which also covers keys ≥ T for every row < T),
// scales to log2 units (c2 = scale·log2 e), updates the running max m and this thread's part of
// the row sum l, rescales the output accumulator o (same layout, DN 8-column tiles) and leaves
// P = exp2(S − max) in sc.
template <int SN, int DN>
__device__ __forceinline__ void online_softmax_tile(float (&sc)[SN][4], float (&o)[DN][4],
                                                    float m[2], float l[2], int k0,
                                                    const int rows[2], int c, float c2) {
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < SN; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int key = k0 + n * 8 + 2 * c + (i & 1);
            const float x = key > rows[i >> 1] ? -CUDART_INF_F : sc[n][i] * c2;
            sc[n][i] = x;
            mx[i >> 1] = fmaxf(mx[i >> 1], x);
        }
    float ref[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = quad_max(mx[r]);
        ref[r] = mx[r] == -CUDART_INF_F ? 0.f : mx[r];  // no key yet: exp2f(-inf) = 0, no NaN
        const float alpha = exp2f(m[r] - ref[r]);     // 0 while m = -inf
        m[r] = mx[r];
        l[r] *= alpha;
#pragma unroll
        for (int n = 0; n < DN; ++n) o[n][2 * r] *= alpha, o[n][2 * r + 1] *= alpha;
    }
#pragma unroll
    for (int n = 0; n < SN; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float p = exp2f(sc[n][i] - ref[i >> 1]);
            sc[n][i] = p;
            l[i >> 1] += p;
        }
}

// The forward's epilogue: out = O / rowsum for this thread's two rows (those < T), columns
// < head_dim, and lse = ln(rowsum) + max (natural log, from the log2-unit max) by the row's
// first lane. out [B·T, Hq·hd], lse [B, Hq, T]; base = b·T.
template <int DN>
__device__ __forceinline__ void write_forward_rows(float* out, float* lse, const float (&o)[DN][4],
                                                   const float m[2], const float l[2],
                                                   const int rows[2], AttnDims s, int64_t base,
                                                   int b, int h, int c) {
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float lt = quad_sum(l[r]);  // ≥ 1 for a real row: its max key contributes exp2(0)
        const int t = rows[r];
        if (t >= s.seq) continue;
        const float inv = 1.f / lt;
        float* dst = out + (base + t) * qs + h * hd;
#pragma unroll
        for (int n = 0; n < DN; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int d = n * 8 + 2 * c + e;
                if (d < hd) dst[d] = o[n][2 * r + e] * inv;
            }
        if (c == 0) lse[((int64_t)b * s.n_heads + h) * s.seq + t] = (m[r] + log2f(lt)) * LN2;
    }
}

// The dq kernels' per-row statistics: lse in log2 units and δ of this thread's two rows
// (0 for rows ≥ T).
__device__ __forceinline__ void load_row_stats(float lse2[2], float dlt[2], const float* lse,
                                               const float* delta, const int rows[2], AttnDims s,
                                               int b, int h) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const bool ok = rows[r] < s.seq;
        const int64_t st = ((int64_t)b * s.n_heads + h) * s.seq + rows[r];
        lse2[r] = ok ? lse[st] * LOG2E : 0.f;
        dlt[r] = ok ? delta[st] : 0.f;
    }
}

// dq's tile, rows = queries, keys k0 + 8n + 2c + {0, 1}: dS (unscaled) = P∘(dP − δ) overwrites
// sc, P = exp2(S·c2 − lse2) recomputed from the forward's lse; masked entries are exactly 0.
template <int SN>
__device__ __forceinline__ void score_grads_by_row(float (&sc)[SN][4], const float (&dp)[SN][4],
                                                   int k0, const int rows[2], int c, float c2,
                                                   const float lse2[2], const float dlt[2]) {
#pragma unroll
    for (int n = 0; n < SN; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int key = k0 + n * 8 + 2 * c + (i & 1);
            const int r = i >> 1;
            const float p = key > rows[r] ? 0.f : exp2f(sc[n][i] * c2 - lse2[r]);
            sc[n][i] = p * (dp[n][i] - dlt[r]);
        }
}

// dk/dv's tile, transposed (rows = keys, columns = queries t0 + j with lse and δ of query j in
// slse[j], sdlt[j]): st ← Pᵀ, dpt ← dSᵀ (unscaled); entries with query < key or query ≥ T are 0.
template <int SN>
__device__ __forceinline__ void score_grads_by_key(float (&st)[SN][4], float (&dpt)[SN][4],
                                                   int t0, const int keys[2], int c, float c2,
                                                   const float* slse, const float* sdlt,
                                                   int seq) {
#pragma unroll
    for (int n = 0; n < SN; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int j = n * 8 + 2 * c + (i & 1);
            const int t = t0 + j;
            const bool ok = t >= keys[i >> 1] && t < seq;
            const float p = ok ? exp2f(st[n][i] * c2 - slse[j] * LOG2E) : 0.f;
            st[n][i] = p;
            dpt[n][i] = p * (dpt[n][i] - sdlt[j]);
        }
}

// dq's epilogue: dq = scale · acc for this thread's rows < T and columns < head_dim.
template <int DN>
__device__ __forceinline__ void write_dq_rows(float* dq, const float (&acc)[DN][4],
                                              const int rows[2], AttnDims s, int64_t base, int h,
                                              int c, float scale) {
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int t = rows[r];
        if (t >= s.seq) continue;
        float* dst = dq + (base + t) * qs + h * hd;
#pragma unroll
        for (int n = 0; n < DN; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int d = n * 8 + 2 * c + e;
                if (d < hd) dst[d] = acc[n][2 * r + e] * scale;
            }
    }
}

// dk/dv's epilogue: dk = scale · gk and dv = gv for this thread's keys < T (kv head kh).
template <int DN>
__device__ __forceinline__ void write_dkv_rows(float* dk, float* dv, const float (&gk)[DN][4],
                                               const float (&gv)[DN][4], const int keys[2],
                                               AttnDims s, int64_t base, int kh, int c,
                                               float scale) {
    const int hd = s.head_dim;
    const int64_t ks = (int64_t)s.n_kv_heads * hd;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = keys[r];
        if (key >= s.seq) continue;
        const int64_t at = (base + key) * ks + kh * hd;
#pragma unroll
        for (int n = 0; n < DN; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int d = n * 8 + 2 * c + e;
                if (d < hd) {
                    dk[at + d] = gk[n][2 * r + e] * scale;
                    dv[at + d] = gv[n][2 * r + e];
                }
            }
    }
}
