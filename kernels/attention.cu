// Causal GQA self-attention, FlashAttention-2 structure in f32 on CUDA cores:
// tiles of keys/values staged in shared memory, online softmax, the T×T score matrix is never
// stored. q/out: [B·T, Hq·hd]; k/v: [B·T, Hkv·hd]; lse: [B, Hq, T] (natural log).
// head_dim up to ATTN_MAX_HD; each lane of a warp owns dims d = lane + 32·i.
#include "common.cuh"

#include <cuda_bf16.h>

#define ATTN_MAX_HD 128
#define ATTN_PER_LANE (ATTN_MAX_HD / 32)
#define ATTN_ROWS 8   // query rows per block, one warp each
#define ATTN_KEYS 32  // keys per shared tile, one per lane when scoring
#define PAD (ATTN_MAX_HD + 1)  // row stride for tiles read lane-per-row (no bank conflicts)

struct AttnDims {
    int batch, seq, n_heads, n_kv_heads, head_dim;
};

// Forward. grid = (ceil(T / ATTN_ROWS), Hq, B), block = 32·ATTN_ROWS.
CADA_KERNEL void attention_forward(float* out, float* lse, const float* q, const float* k,
                                   const float* v, AttnDims s, float scale) {
    __shared__ float sk[ATTN_KEYS * PAD];
    __shared__ float sv[ATTN_KEYS * ATTN_MAX_HD];
    __shared__ float sq[ATTN_ROWS * ATTN_MAX_HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y;
    const int kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int t0 = blockIdx.x * ATTN_ROWS;
    const int t = t0 + warp;
    const bool row_ok = t < s.seq;
    const int last_key = min(s.seq - 1, t0 + ATTN_ROWS - 1);

    for (int d = lane; d < hd; d += 32)
        sq[warp * ATTN_MAX_HD + d] = row_ok ? q[((int64_t)b * s.seq + t) * qs + h * hd + d] : 0.f;
    float o[ATTN_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) o[i] = 0.f;
    float m = -CUDART_INF_F, l = 0.f;

    for (int k0 = 0; k0 <= last_key; k0 += ATTN_KEYS) {
        __syncthreads();  // previous tile fully consumed (and sq written on the first pass)
        for (int idx = threadIdx.x; idx < ATTN_KEYS * hd; idx += blockDim.x) {
            const int j = idx / hd, d = idx % hd;
            const int key = k0 + j;
            const bool ok = key < s.seq;
            const int64_t at = ((int64_t)b * s.seq + key) * ks + kh * hd + d;
            sk[j * PAD + d] = ok ? k[at] : 0.f;
            sv[j * ATTN_MAX_HD + d] = ok ? v[at] : 0.f;
        }
        __syncthreads();
        if (!row_ok) continue;
        // lane j scores key k0 + j
        const int key = k0 + lane;
        float score = -CUDART_INF_F;
        if (key <= t) {
            float acc = 0.f;
            for (int d = 0; d < hd; ++d) acc += sq[warp * ATTN_MAX_HD + d] * sk[lane * PAD + d];
            score = acc * scale;
        }
        const float m_new = fmaxf(m, warp_max(score));  // finite: key k0 <= t always scores
        const float p = key <= t ? expf(score - m_new) : 0.f;
        const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
        l = l * alpha + warp_sum(p);
        m = m_new;
#pragma unroll
        for (int i = 0; i < ATTN_PER_LANE; ++i) o[i] *= alpha;
        const int keys_here = min(ATTN_KEYS, t - k0 + 1);
        for (int j = 0; j < keys_here; ++j) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < ATTN_PER_LANE; ++i) {
                const int d = lane + 32 * i;
                if (d < hd) o[i] += pj * sv[j * ATTN_MAX_HD + d];
            }
        }
    }
    if (!row_ok) return;
    const float inv_l = 1.f / l;
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) out[((int64_t)b * s.seq + t) * qs + h * hd + d] = o[i] * inv_l;
    }
    if (lane == 0) lse[((int64_t)b * s.n_heads + h) * s.seq + t] = m + logf(l);
}

// Backward step 1: delta[b, h, t] = Σ_d dout·out (the softmax-backward row term).
// One warp per row; grid.x covers B·Hq·T rows in blocks of 8 warps. `out` is f32, or bf16 when
// the model kept the attention output in bf16 alone (`keep_as_attention_output`, bf16 mode).
__device__ __forceinline__ float as_f32(float x) { return x; }
__device__ __forceinline__ float as_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Out>
__device__ __forceinline__ void delta_body(float* delta, const float* dout, const Out* out,
                                           AttnDims s) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int64_t rows = (int64_t)s.batch * s.n_heads * s.seq;
    if (row >= rows) return;
    const int t = row % s.seq;
    const int h = (row / s.seq) % s.n_heads;
    const int b = row / ((int64_t)s.seq * s.n_heads);
    const int hd = s.head_dim;
    const int64_t at = ((int64_t)b * s.seq + t) * s.n_heads * hd + (int64_t)h * hd;
    float acc = 0.f;
    for (int d = lane; d < hd; d += 32) acc += dout[at + d] * as_f32(out[at + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

CADA_KERNEL void attention_backward_delta(float* delta, const float* dout, const float* out,
                                          AttnDims s) {
    delta_body(delta, dout, out, s);
}
CADA_KERNEL void attention_backward_delta_bf16(float* delta, const float* dout,
                                               const __nv_bfloat16* out, AttnDims s) {
    delta_body(delta, dout, out, s);
}

// Backward step 2: dq. Same tiling as the forward: warp per query row, probabilities recomputed
// from lse: p = exp(q·k·scale − lse), ds = p·(dout·v − delta)·scale, dq = Σ_j ds_j k_j.
// grid = (ceil(T / ATTN_ROWS), Hq, B).
CADA_KERNEL void attention_backward_dq(float* dq, const float* dout, const float* q,
                                       const float* k, const float* v, const float* lse,
                                       const float* delta, AttnDims s, float scale) {
    __shared__ float sk[ATTN_KEYS * PAD];
    __shared__ float sv[ATTN_KEYS * PAD];
    __shared__ float sq[ATTN_ROWS * ATTN_MAX_HD];
    __shared__ float sdo[ATTN_ROWS * ATTN_MAX_HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y;
    const int kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int t0 = blockIdx.x * ATTN_ROWS;
    const int t = t0 + warp;
    const bool row_ok = t < s.seq;
    const int last_key = min(s.seq - 1, t0 + ATTN_ROWS - 1);
    const int64_t qrow = ((int64_t)b * s.seq + t) * qs + h * hd;
    for (int d = lane; d < hd; d += 32) {
        sq[warp * ATTN_MAX_HD + d] = row_ok ? q[qrow + d] : 0.f;
        sdo[warp * ATTN_MAX_HD + d] = row_ok ? dout[qrow + d] : 0.f;
    }
    const int64_t stat = ((int64_t)b * s.n_heads + h) * s.seq + t;
    const float row_lse = row_ok ? lse[stat] : 0.f;
    const float row_delta = row_ok ? delta[stat] : 0.f;
    float g[ATTN_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) g[i] = 0.f;

    for (int k0 = 0; k0 <= last_key; k0 += ATTN_KEYS) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATTN_KEYS * hd; idx += blockDim.x) {
            const int j = idx / hd, d = idx % hd;
            const int key = k0 + j;
            const bool ok = key < s.seq;
            const int64_t at = ((int64_t)b * s.seq + key) * ks + kh * hd + d;
            sk[j * PAD + d] = ok ? k[at] : 0.f;
            sv[j * PAD + d] = ok ? v[at] : 0.f;
        }
        __syncthreads();
        if (!row_ok) continue;
        const int key = k0 + lane;
        float ds = 0.f;
        if (key <= t) {
            float qk = 0.f, dp = 0.f;
            for (int d = 0; d < hd; ++d) {
                qk += sq[warp * ATTN_MAX_HD + d] * sk[lane * PAD + d];
                dp += sdo[warp * ATTN_MAX_HD + d] * sv[lane * PAD + d];
            }
            const float p = expf(qk * scale - row_lse);
            ds = p * (dp - row_delta) * scale;
        }
        const int keys_here = min(ATTN_KEYS, t - k0 + 1);
        for (int j = 0; j < keys_here; ++j) {
            const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
            for (int i = 0; i < ATTN_PER_LANE; ++i) {
                const int d = lane + 32 * i;
                if (d < hd) g[i] += dsj * sk[j * PAD + d];
            }
        }
    }
    if (!row_ok) return;
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) dq[qrow + d] = g[i];
    }
}

#define DKV_KEYS 8      // keys per block, one warp each
#define DKV_QUERIES 32  // query rows per shared tile, one per lane when scoring

// Backward step 3: dk, dv. Block per (key tile, kv head, batch); warp w owns key k0 + w and
// keeps its dk/dv in registers while every query row t >= key of every head of the group
// streams through shared memory. No atomics: each key is written by exactly one warp.
CADA_KERNEL void attention_backward_dkv(float* dk, float* dv, const float* dout, const float* q,
                                        const float* k, const float* v, const float* lse,
                                        const float* delta, AttnDims s, float scale) {
    __shared__ float sk[DKV_KEYS * ATTN_MAX_HD];
    __shared__ float sv[DKV_KEYS * ATTN_MAX_HD];
    __shared__ float sq[DKV_QUERIES * PAD];
    __shared__ float sdo[DKV_QUERIES * PAD];
    __shared__ float slse[DKV_QUERIES], sdelta[DKV_QUERIES];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.z, kh = blockIdx.y;
    const int group = s.n_heads / s.n_kv_heads;
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int k0 = blockIdx.x * DKV_KEYS;
    const int key = k0 + warp;
    const bool key_ok = key < s.seq;
    const int64_t krow = ((int64_t)b * s.seq + key) * ks + kh * hd;
    for (int d = lane; d < hd; d += 32) {
        sk[warp * ATTN_MAX_HD + d] = key_ok ? k[krow + d] : 0.f;
        sv[warp * ATTN_MAX_HD + d] = key_ok ? v[krow + d] : 0.f;
    }
    float gk[ATTN_PER_LANE], gv[ATTN_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) gk[i] = gv[i] = 0.f;

    for (int gi = 0; gi < group; ++gi) {
        const int h = kh * group + gi;
        for (int q0 = (k0 / DKV_QUERIES) * DKV_QUERIES; q0 < s.seq; q0 += DKV_QUERIES) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < DKV_QUERIES * hd; idx += blockDim.x) {
                const int r = idx / hd, d = idx % hd;
                const int tq = q0 + r;
                const bool ok = tq < s.seq;
                const int64_t at = ((int64_t)b * s.seq + tq) * qs + (int64_t)h * hd + d;
                sq[r * PAD + d] = ok ? q[at] : 0.f;
                sdo[r * PAD + d] = ok ? dout[at] : 0.f;
            }
            if (threadIdx.x < DKV_QUERIES) {
                const int tq = q0 + threadIdx.x;
                const int64_t st = ((int64_t)b * s.n_heads + h) * s.seq + tq;
                slse[threadIdx.x] = tq < s.seq ? lse[st] : 0.f;
                sdelta[threadIdx.x] = tq < s.seq ? delta[st] : 0.f;
            }
            __syncthreads();
            if (!key_ok) continue;
            // lane r handles query q0 + r against this warp's key
            const int tq = q0 + lane;
            float p = 0.f, ds = 0.f;
            if (tq < s.seq && tq >= key) {
                float qk = 0.f, dp = 0.f;
                for (int d = 0; d < hd; ++d) {
                    qk += sq[lane * PAD + d] * sk[warp * ATTN_MAX_HD + d];
                    dp += sdo[lane * PAD + d] * sv[warp * ATTN_MAX_HD + d];
                }
                p = expf(qk * scale - slse[lane]);
                ds = p * (dp - sdelta[lane]) * scale;
            }
            const int rows_here = min(DKV_QUERIES, s.seq - q0);
            for (int r = 0; r < rows_here; ++r) {
                const float pr = __shfl_sync(0xffffffffu, p, r);
                const float dsr = __shfl_sync(0xffffffffu, ds, r);
#pragma unroll
                for (int i = 0; i < ATTN_PER_LANE; ++i) {
                    const int d = lane + 32 * i;
                    if (d < hd) {
                        gv[i] += pr * sdo[r * PAD + d];
                        gk[i] += dsr * sq[r * PAD + d];
                    }
                }
            }
        }
    }
    if (!key_ok) return;
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) {
            dk[krow + d] = gk[i];
            dv[krow + d] = gv[i];
        }
    }
}
