// Split-KV decode attention ("flash-decoding"), CADA_DECODE_ATTENTION=split_kv: the same
// single-token attention over the KV cache as decode_attention.cu, computed in two launches.
//
// 1. decode_attention_split_partials: grid (Hkv · head_tiles, batch, splits). A block takes one
//    kv head and a range of keys_per_split keys, and serves every query head of that kv head's
//    GQA group (up to DEC_SPLIT_GROUP of them; larger groups take head_tiles blocks). Each
//    cached key and value row is therefore read once per group, not once per query head as in
//    decode_attention.cu (3 reads → 1 for SmolLM2's 9/3 heads, 7 → 1 for Qwen2.5-0.5B's 14/2),
//    and a short batch still fills the GPU: `cada generate` at batch 1 is 3 blocks on a
//    132-SM H100 with one block per (head, sequence), tens with the keys split. Lanes score
//    keys as in the lane-per-key kernel (a lane's whole-row dot products, one warp max and sum
//    per 32 keys and head), warps merge in shared memory, and the block writes its range's
//    partial softmax: the running max m, the sum l and the unnormalised output o.
// 2. decode_attention_merge_splits: grid (Hq, batch). The used splits' partials, rescaled to
//    their common max, summed and normalised into the output row (and its bf16 copy in the
//    bf16 GEMM mode).
//
// f32 math throughout; the cache is f32 or bf16 (`_bf16_kv`). `partials` holds, for each
// (sequence, query head, split) slot = (b·Hq + h)·splits + split: m and l at 2·slot, 2·slot + 1,
// then o at 2·slots + slot·hd. Splits past a sequence's length are neither written nor read.
#include "decode_common.cuh"

// Query heads one block serves: the whole group of a kv head up to this many.
#define DEC_SPLIT_GROUP 8

struct DecodeSplit {
    int splits;          // key ranges per sequence: gridDim.z
    int keys_per_split;  // a multiple of 32; splits · keys_per_split ≥ capacity
    int head_tiles;      // ⌈group / DEC_SPLIT_GROUP⌉: blocks per kv head
};

__device__ __forceinline__ int64_t split_slot(DecodeDims s, DecodeSplit sp, int b, int h,
                                              int split) {
    return ((int64_t)b * s.n_heads + h) * sp.splits + split;
}

// acc[g] += q_g · key for the block's gn query rows (shared memory, row stride DEC_MAX_HD),
// the key row read once for all of them: 16 bytes at a time when `vec` (4 f32 or 8 bf16
// values), else one element at a time.
__device__ __forceinline__ void group_scores(const float* kr, const float* qs, int hd, bool vec,
                                             int gn, float (&acc)[DEC_SPLIT_GROUP]) {
    if (vec) {
        const float4* k4 = reinterpret_cast<const float4*>(kr);
        for (int d4 = 0; d4 < hd / 4; ++d4) {
            const float4 kv = k4[d4];
#pragma unroll
            for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
                if (g >= gn) break;
                const float4 qv = reinterpret_cast<const float4*>(qs + g * DEC_MAX_HD)[d4];
                acc[g] += qv.x * kv.x;
                acc[g] += qv.y * kv.y;
                acc[g] += qv.z * kv.z;
                acc[g] += qv.w * kv.w;
            }
        }
    } else {
        for (int d = 0; d < hd; ++d) {
            const float kd = kr[d];
#pragma unroll
            for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
                if (g >= gn) break;
                acc[g] += qs[g * DEC_MAX_HD + d] * kd;
            }
        }
    }
}
__device__ __forceinline__ void group_scores(const __nv_bfloat16* kr, const float* qs, int hd,
                                             bool vec, int gn, float (&acc)[DEC_SPLIT_GROUP]) {
    if (vec) {
        const uint4* k8 = reinterpret_cast<const uint4*>(kr);
        for (int d8 = 0; d8 < hd / 8; ++d8) {
            float kf[8];
            widen8_bf16(k8[d8], kf);
#pragma unroll
            for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
                if (g >= gn) break;
                const float4* q4 = reinterpret_cast<const float4*>(qs + g * DEC_MAX_HD + 8 * d8);
                const float4 qa = q4[0], qb = q4[1];
                acc[g] += qa.x * kf[0];
                acc[g] += qa.y * kf[1];
                acc[g] += qa.z * kf[2];
                acc[g] += qa.w * kf[3];
                acc[g] += qb.x * kf[4];
                acc[g] += qb.y * kf[5];
                acc[g] += qb.z * kf[6];
                acc[g] += qb.w * kf[7];
            }
        }
    } else {
        for (int d = 0; d < hd; ++d) {
            const float kd = __bfloat162float(kr[d]);
#pragma unroll
            for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
                if (g >= gn) break;
                acc[g] += qs[g * DEC_MAX_HD + d] * kd;
            }
        }
    }
}

// Launch 1 (see the top of the file). block = 32·DEC_WARPS; warp w takes the chunks of 32 keys
// k_begin + 32·w, + 32·DEC_WARPS, ... of the block's range.
template <typename T>
__device__ __forceinline__ void split_partials_rows(float* partials, const float* q,
                                                    const T* k_cache, const T* v_cache,
                                                    const unsigned int* positions, DecodeDims s,
                                                    DecodeSplit sp, float scale) {
    __shared__ float4 qs4[DEC_SPLIT_GROUP * DEC_MAX_HD / 4];
    __shared__ float wm[DEC_WARPS][DEC_SPLIT_GROUP], wl[DEC_WARPS][DEC_SPLIT_GROUP];
    __shared__ float wo[DEC_WARPS][DEC_SPLIT_GROUP][DEC_MAX_HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = s.n_heads / s.n_kv_heads;
    const int kh = blockIdx.x / sp.head_tiles, tile = blockIdx.x % sp.head_tiles;
    const int h0 = kh * group + tile * DEC_SPLIT_GROUP;
    const int gn = min(DEC_SPLIT_GROUP, group - tile * DEC_SPLIT_GROUP);  // uniform in the block
    const int b = blockIdx.y, split = blockIdx.z;
    const int hd = s.head_dim;
    const int64_t kvd = (int64_t)s.n_kv_heads * hd;
    if ((int64_t)positions[b] >= s.capacity) return;  // the merge writes that row's NaNs
    const int len = (int)positions[b] + 1;
    const int k_begin = split * sp.keys_per_split;
    if (k_begin >= len) return;  // past this sequence's keys: the merge reads used splits only
    const int k_end = min(len, k_begin + sp.keys_per_split);
    float* qs = reinterpret_cast<float*>(qs4);
    for (int i = threadIdx.x; i < gn * hd; i += blockDim.x) {
        const int g = i / hd, d = i % hd;
        qs[g * DEC_MAX_HD + d] = q[((int64_t)b * s.n_heads + h0 + g) * hd + d];
    }
    __syncthreads();
    // 16-byte key rows need head_dim a multiple of 16 bytes' worth of elements and a 16-byte
    // aligned cache (a whole allocation is; checked so that a view cannot fault)
    constexpr int per16 = 16 / (int)sizeof(T);
    const bool vec = hd % per16 == 0 && (reinterpret_cast<unsigned long long>(k_cache) & 15) == 0;
    float m[DEC_SPLIT_GROUP], l[DEC_SPLIT_GROUP], o[DEC_SPLIT_GROUP][DEC_PER_LANE];
#pragma unroll
    for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
        m[g] = -CUDART_INF_F;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < DEC_PER_LANE; ++i) o[g][i] = 0.f;
    }
    const T* k_slot = k_cache + (int64_t)b * s.capacity * kvd + (int64_t)kh * hd;
    const T* v_slot = v_cache + (int64_t)b * s.capacity * kvd + (int64_t)kh * hd;
    for (int c0 = k_begin + warp * 32; c0 < k_end; c0 += DEC_WARPS * 32) {
        const int j = c0 + lane;
        const bool live = j < k_end;
        float acc[DEC_SPLIT_GROUP];
#pragma unroll
        for (int g = 0; g < DEC_SPLIT_GROUP; ++g) acc[g] = 0.f;
        if (live) group_scores(k_slot + (int64_t)j * kvd, qs, hd, vec, gn, acc);
        float p[DEC_SPLIT_GROUP];
#pragma unroll
        for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
            p[g] = 0.f;
            if (g >= gn) continue;
            const float score = live ? acc[g] * scale : -CUDART_INF_F;
            // c0 < k_end: the chunk holds at least one key, so its max is finite
            const float m_new = fmaxf(m[g], warp_max(score));
            const float alpha = expf(m[g] - m_new);
            p[g] = live ? expf(score - m_new) : 0.f;
            l[g] = l[g] * alpha + warp_sum(p[g]);
            m[g] = m_new;
#pragma unroll
            for (int i = 0; i < DEC_PER_LANE; ++i) o[g][i] *= alpha;
        }
        const int keys = min(32, k_end - c0);  // the same for every lane of the warp
        for (int t = 0; t < keys; ++t) {
            const T* vr = v_slot + (int64_t)(c0 + t) * kvd;
            float vv[DEC_PER_LANE];  // the value row read once for every head of the group
#pragma unroll
            for (int i = 0; i < DEC_PER_LANE; ++i) {
                const int d = lane + 32 * i;
                vv[i] = d < hd ? cache_load(vr + d) : 0.f;
            }
#pragma unroll
            for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
                if (g >= gn) break;
                const float pt = __shfl_sync(0xffffffffu, p[g], t);
#pragma unroll
                for (int i = 0; i < DEC_PER_LANE; ++i) o[g][i] += pt * vv[i];
            }
        }
    }
    // the warps' partial softmaxes merged (a warp with no keys has m = -inf and weight 0;
    // warp 0 always has key k_begin, so the block's max is finite)
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
            wm[warp][g] = m[g];
            wl[warp][g] = l[g];
        }
    }
#pragma unroll
    for (int g = 0; g < DEC_SPLIT_GROUP; ++g) {
        if (g >= gn) break;
#pragma unroll
        for (int i = 0; i < DEC_PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) wo[warp][g][d] = o[g][i];
        }
    }
    __syncthreads();
    const int64_t slots = (int64_t)s.batch * s.n_heads * sp.splits;
    for (int i = threadIdx.x; i < gn * hd; i += blockDim.x) {
        const int g = i / hd, d = i % hd;
        float gm = -CUDART_INF_F;
        for (int w = 0; w < DEC_WARPS; ++w) gm = fmaxf(gm, wm[w][g]);
        float acc = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) acc += wo[w][g][d] * expf(wm[w][g] - gm);
        const int64_t slot = split_slot(s, sp, b, h0 + g, split);
        partials[2 * slots + slot * hd + d] = acc;
        if (d == 0) {
            float total = 0.f;
            for (int w = 0; w < DEC_WARPS; ++w) total += wl[w][g] * expf(wm[w][g] - gm);
            partials[2 * slot] = gm;
            partials[2 * slot + 1] = total;
        }
    }
}

CADA_KERNEL void decode_attention_split_partials(float* partials, const float* q,
                                                 const float* k_cache, const float* v_cache,
                                                 const unsigned int* positions, DecodeDims s,
                                                 DecodeSplit sp, float scale) {
    split_partials_rows(partials, q, k_cache, v_cache, positions, s, sp, scale);
}

CADA_KERNEL void decode_attention_split_partials_bf16_kv(float* partials, const float* q,
                                                         const __nv_bfloat16* k_cache,
                                                         const __nv_bfloat16* v_cache,
                                                         const unsigned int* positions,
                                                         DecodeDims s, DecodeSplit sp,
                                                         float scale) {
    split_partials_rows(partials, q, k_cache, v_cache, positions, s, sp, scale);
}

// Launch 2: grid (Hq, batch), block = 32·DEC_WARPS, a thread per output dim. A position past
// the capacity gives a NaN row (as decode_attention.cu), read from no partial.
__device__ __forceinline__ void merge_splits_row(float* out, __nv_bfloat16* out16,
                                                 const float* partials,
                                                 const unsigned int* positions, DecodeDims s,
                                                 DecodeSplit sp) {
    const int h = blockIdx.x, b = blockIdx.y;
    const int hd = s.head_dim;
    const int64_t at = ((int64_t)b * s.n_heads + h) * hd;
    if ((int64_t)positions[b] >= s.capacity) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            out[at + d] = CUDART_NAN_F;
            if (out16) out16[at + d] = __float2bfloat16_rn(CUDART_NAN_F);
        }
        return;
    }
    const int len = (int)positions[b] + 1;
    const int used = (len + sp.keys_per_split - 1) / sp.keys_per_split;  // ≥ 1, ≤ splits
    const int64_t first = split_slot(s, sp, b, h, 0);
    const int64_t slots = (int64_t)s.batch * s.n_heads * sp.splits;
    float gm = -CUDART_INF_F;
    for (int k = 0; k < used; ++k) gm = fmaxf(gm, partials[2 * (first + k)]);
    float total = 0.f;
    for (int k = 0; k < used; ++k)
        total += partials[2 * (first + k) + 1] * expf(partials[2 * (first + k)] - gm);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        for (int k = 0; k < used; ++k)
            acc += partials[2 * slots + (first + k) * hd + d] * expf(partials[2 * (first + k)] - gm);
        const float v = acc / total;
        out[at + d] = v;
        if (out16) out16[at + d] = __float2bfloat16_rn(v);
    }
}

CADA_KERNEL void decode_attention_merge_splits(float* out, const float* partials,
                                               const unsigned int* positions, DecodeDims s,
                                               DecodeSplit sp) {
    merge_splits_row(out, nullptr, partials, positions, s, sp);
}

// The same, also writing the output's bf16 copy (RNE): o_proj's input in the bf16 GEMM mode.
CADA_KERNEL void decode_attention_merge_splits_with_bf16(float* out, __nv_bfloat16* out16,
                                                         const float* partials,
                                                         const unsigned int* positions,
                                                         DecodeDims s, DecodeSplit sp) {
    merge_splits_row(out, out16, partials, positions, s, sp);
}
