// Batched single-token decode over a KV cache [slots, capacity, Hkv·hd]; row b uses slot b and
// attends to positions 0..=positions[b]. f32 math, online softmax per warp, warps merged at the
// end. The cache is f32, or bf16 (the `_bf16_kv` kernels, CADA_KV_CACHE=bf16): it is the decode
// step's largest read (SmolLM2 at batch 64 and 384 positions: 1.1 GB in f32 against 0.27 GB
// of bf16 weights), written once per position with RNE and widened to f32 on every read.
#include "decode_common.cuh"
#include "rmsnorm_common.cuh"
#include "rope_common.cuh"

// Thread per element of k/v [batch, Hkv·hd].
template <typename T>
__device__ __forceinline__ void kv_cache_write_rows(T* k_cache, T* v_cache, const float* k,
                                                    const float* v, const unsigned int* positions,
                                                    DecodeDims s) {
    const int64_t kvd = (int64_t)s.n_kv_heads * s.head_dim;
    GRID_STRIDE(i, (int64_t)s.batch * kvd) {
        const int64_t b = i / kvd, c = i % kvd;
        if ((int64_t)positions[b] >= s.capacity) continue;  // caller bug: never write past the slot
        const int64_t dst = (b * s.capacity + positions[b]) * kvd + c;
        cache_store(k_cache + dst, k[i]);
        cache_store(v_cache + dst, v[i]);
    }
}

CADA_KERNEL void kv_cache_write(float* k_cache, float* v_cache, const float* k, const float* v,
                                const unsigned int* positions, DecodeDims s) {
    kv_cache_write_rows(k_cache, v_cache, k, v, positions, s);
}

CADA_KERNEL void kv_cache_write_bf16_kv(__nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                                        const float* k, const float* v,
                                        const unsigned int* positions, DecodeDims s) {
    kv_cache_write_rows(k_cache, v_cache, k, v, positions, s);
}

// The decode step's RoPE of q and k fused with the cache write: rope_apply (sign +1) on q and
// on k, then kv_cache_write of the rotated k and of v, in one launch. One thread per pair of a
// head (rope_pair, as rope_apply: a rotated pair or two pass-through dims): pairs
// [0, n_heads·half) of a row are q's, the next n_kv_heads·half are k's (whose thread also copies
// v's two elements of that pair). Rows of q, k
// and v are read with row strides (`q_ld`, `kv_ld`: the stacked variant reads all three from one
// GEMM output row); the rotated q goes to `q_out` [batch, Hq·hd], the rotated k to `k_out` when
// not null, and into the cache.
template <typename T>
__device__ __forceinline__ void rope_cache_write_pairs(float* q_out, float* k_out, T* k_cache,
                                                       T* v_cache, const float* q_in,
                                                       const float* k_in, const float* v_in,
                                                       int64_t q_ld, int64_t kv_ld,
                                                       const unsigned int* positions,
                                                       const float* inv_freq, RopeDims r,
                                                       DecodeDims s) {
    const int half = s.head_dim / 2;
    const int64_t q_pairs = (int64_t)s.n_heads * half;
    const int64_t row_pairs = q_pairs + (int64_t)s.n_kv_heads * half;
    const int64_t kvd = (int64_t)s.n_kv_heads * s.head_dim;
    GRID_STRIDE(idx, (int64_t)s.batch * row_pairs) {
        const int64_t b = idx / row_pairs;
        const int64_t rem = idx % row_pairs;
        const bool is_q = rem < q_pairs;
        const int64_t pair = is_q ? rem : rem - q_pairs;
        const int h = (int)(pair / half), p = (int)(pair % half);
        int e1, e2;
        float cs, sn;
        rope_pair(p, s.head_dim, r, positions[b], inv_freq, 1.0f, &e1, &e2, &cs, &sn);
        const int64_t head = (int64_t)h * s.head_dim;  // offset of the head in its row
        const int64_t a1 = head + e1, a2 = head + e2;
        const float* src = is_q ? q_in + b * q_ld : k_in + b * kv_ld;
        const float x1 = src[a1], x2 = src[a2];
        const float y1 = x1 * cs - x2 * sn, y2 = x2 * cs + x1 * sn;
        if (is_q) {
            float* dst = q_out + b * q_pairs * 2;
            dst[a1] = y1;
            dst[a2] = y2;
            continue;
        }
        if (k_out) {
            k_out[b * kvd + a1] = y1;
            k_out[b * kvd + a2] = y2;
        }
        if ((int64_t)positions[b] >= s.capacity) continue;  // as kv_cache_write
        const int64_t dst = (b * s.capacity + positions[b]) * kvd;
        cache_store(k_cache + dst + a1, y1);
        cache_store(k_cache + dst + a2, y2);
        cache_store(v_cache + dst + a1, v_in[b * kv_ld + a1]);
        cache_store(v_cache + dst + a2, v_in[b * kv_ld + a2]);
    }
}

// q [batch, Hq·hd] and k [batch, Hkv·hd] rotated in place, v [batch, Hkv·hd].
template <typename T>
__device__ __forceinline__ void rope_cache_write_rows(float* q, float* k, T* k_cache, T* v_cache,
                                                      const float* v,
                                                      const unsigned int* positions,
                                                      const float* inv_freq, RopeDims r,
                                                      DecodeDims s) {
    const int64_t qd = (int64_t)s.n_heads * s.head_dim, kvd = (int64_t)s.n_kv_heads * s.head_dim;
    rope_cache_write_pairs(q, k, k_cache, v_cache, q, k, v, qd, kvd, positions, inv_freq, r, s);
}

CADA_KERNEL void decode_rope_cache_write(float* q, float* k, float* k_cache, float* v_cache,
                                         const float* v, const unsigned int* positions,
                                         const float* inv_freq, RopeDims r, DecodeDims s) {
    rope_cache_write_rows(q, k, k_cache, v_cache, v, positions, inv_freq, r, s);
}

CADA_KERNEL void decode_rope_cache_write_bf16_kv(float* q, float* k, __nv_bfloat16* k_cache,
                                                 __nv_bfloat16* v_cache, const float* v,
                                                 const unsigned int* positions,
                                                 const float* inv_freq, RopeDims r, DecodeDims s) {
    rope_cache_write_rows(q, k, k_cache, v_cache, v, positions, inv_freq, r, s);
}

// The same from the stacked q/k/v projection's output qkv [batch, Hq·hd + 2·Hkv·hd] (each row
// q | k | v), left unchanged: the rotated q is written to q_out, the rotated k only into the
// cache (the decode step reads k nowhere else).
template <typename T>
__device__ __forceinline__ void rope_cache_write_stacked_rows(float* q_out, T* k_cache,
                                                              T* v_cache, const float* qkv,
                                                              const unsigned int* positions,
                                                              const float* inv_freq, RopeDims r,
                                                              DecodeDims s) {
    const int64_t qd = (int64_t)s.n_heads * s.head_dim, kvd = (int64_t)s.n_kv_heads * s.head_dim;
    const int64_t ld = qd + 2 * kvd;
    rope_cache_write_pairs(q_out, nullptr, k_cache, v_cache, qkv, qkv + qd, qkv + qd + kvd, ld, ld,
                           positions, inv_freq, r, s);
}

CADA_KERNEL void decode_rope_cache_write_stacked(float* q_out, float* k_cache, float* v_cache,
                                                 const float* qkv,
                                                 const unsigned int* positions,
                                                 const float* inv_freq, RopeDims r, DecodeDims s) {
    rope_cache_write_stacked_rows(q_out, k_cache, v_cache, qkv, positions, inv_freq, r, s);
}

CADA_KERNEL void decode_rope_cache_write_stacked_bf16_kv(float* q_out, __nv_bfloat16* k_cache,
                                                         __nv_bfloat16* v_cache, const float* qkv,
                                                         const unsigned int* positions,
                                                         const float* inv_freq, RopeDims r,
                                                         DecodeDims s) {
    rope_cache_write_stacked_rows(q_out, k_cache, v_cache, qkv, positions, inv_freq, r, s);
}

// Qwen3's decode step from the stacked q/k/v projection's output qkv (rows q | k | v, left
// unchanged): each head of q and of k RMSNorm-ed over head_dim with its weight (q_norm, k_norm
// [head_dim]), then rotated and written as decode_rope_cache_write_stacked does. One block per
// head row, grid = (Hq + Hkv, batch), block = the head_rmsnorm launch's (row_threads(head_dim)):
// the same rmsnorm_row_rstd over the same threads and the same x·r·w, so the values equal
// head_rmsnorm_forward's bits before they rotate. Thread per pair of the head (rope_pair).
template <typename T>
__device__ __forceinline__ void qk_norm_rope_cache_write_stacked_rows(
    float* q_out, T* k_cache, T* v_cache, const float* qkv, const float* q_norm,
    const float* k_norm, float eps, const unsigned int* positions, const float* inv_freq,
    RopeDims r, DecodeDims s) {
    __shared__ float scratch[32];
    const int hd = s.head_dim, h = blockIdx.x, kh = h - s.n_heads;
    const int64_t b = blockIdx.y;
    const bool is_q = h < s.n_heads;
    const int64_t qd = (int64_t)s.n_heads * hd, kvd = (int64_t)s.n_kv_heads * hd;
    const int64_t row = b * (qd + 2 * kvd);
    const float* src = qkv + row + (is_q ? (int64_t)h * hd : qd + (int64_t)kh * hd);
    const float* w = is_q ? q_norm : k_norm;
    const float rs = rmsnorm_row_rstd(src, hd, eps, scratch);  // every thread: it synchronises
    const unsigned int pos = positions[b];
    for (int p = threadIdx.x; p < hd / 2; p += blockDim.x) {
        int e1, e2;
        float cs, sn;
        rope_pair(p, hd, r, pos, inv_freq, 1.0f, &e1, &e2, &cs, &sn);
        const float x1 = src[e1] * rs * w[e1], x2 = src[e2] * rs * w[e2];
        const float y1 = x1 * cs - x2 * sn, y2 = x2 * cs + x1 * sn;
        if (is_q) {
            float* dst = q_out + b * qd + (int64_t)h * hd;
            dst[e1] = y1;
            dst[e2] = y2;
            continue;
        }
        if ((int64_t)pos >= s.capacity) continue;  // as kv_cache_write
        const int64_t at = (b * s.capacity + pos) * kvd + (int64_t)kh * hd;
        const float* v = qkv + row + qd + kvd + (int64_t)kh * hd;
        cache_store(k_cache + at + e1, y1);
        cache_store(k_cache + at + e2, y2);
        cache_store(v_cache + at + e1, v[e1]);
        cache_store(v_cache + at + e2, v[e2]);
    }
}

CADA_KERNEL void decode_qk_norm_rope_cache_write_stacked(
    float* q_out, float* k_cache, float* v_cache, const float* qkv, const float* q_norm,
    const float* k_norm, float eps, const unsigned int* positions, const float* inv_freq,
    RopeDims r, DecodeDims s) {
    qk_norm_rope_cache_write_stacked_rows(q_out, k_cache, v_cache, qkv, q_norm, k_norm, eps,
                                          positions, inv_freq, r, s);
}

CADA_KERNEL void decode_qk_norm_rope_cache_write_stacked_bf16_kv(
    float* q_out, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const float* qkv,
    const float* q_norm, const float* k_norm, float eps, const unsigned int* positions,
    const float* inv_freq, RopeDims r, DecodeDims s) {
    qk_norm_rope_cache_write_stacked_rows(q_out, k_cache, v_cache, qkv, q_norm, k_norm, eps,
                                          positions, inv_freq, r, s);
}

// The end of both decode attentions: each warp's partial softmax (running max m, sum l, the
// unnormalised output o of the lane's dims d = lane + 32·i; a warp with no keys has m = -inf and
// weight 0) merged through shared memory into the output row at `at`, and its bf16 rounding
// (RNE) into out16 when not null. Called by every thread of the block.
__device__ __forceinline__ void decode_merge_warps(float* out, __nv_bfloat16* out16, int64_t at,
                                                   int hd, float m, float l,
                                                   const float (&o)[DEC_PER_LANE]) {
    __shared__ float wm[DEC_WARPS], wl[DEC_WARPS];
    __shared__ float wo[DEC_WARPS * DEC_MAX_HD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DEC_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) wo[warp * DEC_MAX_HD + d] = o[i];
    }
    __syncthreads();
    float gm = -CUDART_INF_F;
    for (int w = 0; w < DEC_WARPS; ++w) gm = fmaxf(gm, wm[w]);
    float total = 0.f;
    for (int w = 0; w < DEC_WARPS; ++w) total += wl[w] * expf(wm[w] - gm);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) acc += wo[w * DEC_MAX_HD + d] * expf(wm[w] - gm);
        const float v = acc / total;
        out[at + d] = v;
        if (out16) out16[at + d] = __float2bfloat16_rn(v);
    }
}

// grid = (Hq, batch), block = 32·DEC_WARPS. Warp w scores keys w, w + DEC_WARPS, ...
// (one warp-wide dot product per key), keeping its own running max/sum/output. `out16`, when
// not null, receives the bf16 rounding (RNE) of every output value (the bf16 GEMM mode's copy
// of o_proj's input).
__device__ __forceinline__ void decode_attention_rows(float* out, __nv_bfloat16* out16,
                                                      const float* q, const float* k_cache,
                                                      const float* v_cache,
                                                      const unsigned int* positions,
                                                      DecodeDims s, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.x, b = blockIdx.y;
    const int kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t kvd = (int64_t)s.n_kv_heads * hd;
    if ((int64_t)positions[b] >= s.capacity) {  // caller bug: NaN instead of reading past the slot
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            out[((int64_t)b * s.n_heads + h) * hd + d] = CUDART_NAN_F;
            if (out16) out16[((int64_t)b * s.n_heads + h) * hd + d] = __float2bfloat16_rn(CUDART_NAN_F);
        }
        return;
    }
    const int len = (int)positions[b] + 1;
    const float* qh = q + ((int64_t)b * s.n_heads + h) * hd;
    float qr[DEC_PER_LANE], o[DEC_PER_LANE];
#pragma unroll
    for (int i = 0; i < DEC_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        qr[i] = d < hd ? qh[d] : 0.f;
        o[i] = 0.f;
    }
    float m = -CUDART_INF_F, l = 0.f;
    for (int j = warp; j < len; j += DEC_WARPS) {
        const float* kr = k_cache + ((int64_t)b * s.capacity + j) * kvd + (int64_t)kh * hd;
        const float* vr = v_cache + ((int64_t)b * s.capacity + j) * kvd + (int64_t)kh * hd;
        float acc = 0.f;
#pragma unroll
        for (int i = 0; i < DEC_PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) acc += qr[i] * kr[d];
        }
        const float score = warp_sum(acc) * scale;
        const float m_new = fmaxf(m, score);
        const float alpha = expf(m - m_new), p = expf(score - m_new);
        l = l * alpha + p;
        m = m_new;
#pragma unroll
        for (int i = 0; i < DEC_PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) o[i] = o[i] * alpha + p * vr[d];
        }
    }
    const int64_t at = ((int64_t)b * s.n_heads + h) * hd;
    decode_merge_warps(out, out16, at, hd, m, l, o);
}

CADA_KERNEL void decode_attention(float* out, const float* q, const float* k_cache,
                                  const float* v_cache, const unsigned int* positions,
                                  DecodeDims s, float scale) {
    decode_attention_rows(out, nullptr, q, k_cache, v_cache, positions, s, scale);
}

// The same, also writing the output's bf16 copy (see decode_attention_rows).
CADA_KERNEL void decode_attention_with_bf16(float* out, __nv_bfloat16* out16, const float* q,
                                            const float* k_cache, const float* v_cache,
                                            const unsigned int* positions, DecodeDims s,
                                            float scale) {
    decode_attention_rows(out, out16, q, k_cache, v_cache, positions, s, scale);
}

// A row of 8 bf16 keys (16 bytes) as f32, for the bf16 cache's vector path.
__device__ __forceinline__ float dot8_bf16(const float4* q8, uint4 raw) {
    float k[8];
    widen8_bf16(raw, k);
    const float4 qa = q8[0], qb = q8[1];
    float acc = qa.x * k[0];
    acc += qa.y * k[1];
    acc += qa.z * k[2];
    acc += qa.w * k[3];
    acc += qb.x * k[4];
    acc += qb.y * k[5];
    acc += qb.z * k[6];
    acc += qb.w * k[7];
    return acc;
}

// The scaled dot product of q (shared memory) with one cached key row: 16-byte vector reads
// where head_dim and the cache's alignment allow (4 f32 or 8 bf16 values a read), else scalar.
__device__ __forceinline__ float key_score(const float* kr, const float* qs, const float4* qs4,
                                           int hd, bool vec) {
    float acc = 0.f;
    if (vec) {
        const float4* k4 = reinterpret_cast<const float4*>(kr);
        for (int d4 = 0; d4 < hd / 4; ++d4) {
            const float4 kv = k4[d4], qv = qs4[d4];
            acc += qv.x * kv.x;
            acc += qv.y * kv.y;
            acc += qv.z * kv.z;
            acc += qv.w * kv.w;
        }
    } else {
        for (int d = 0; d < hd; ++d) acc += qs[d] * kr[d];
    }
    return acc;
}
__device__ __forceinline__ float key_score(const __nv_bfloat16* kr, const float* qs,
                                           const float4* qs4, int hd, bool vec) {
    float acc = 0.f;
    if (vec) {
        const uint4* k8 = reinterpret_cast<const uint4*>(kr);
        for (int d8 = 0; d8 < hd / 8; ++d8) acc += dot8_bf16(qs4 + 2 * d8, k8[d8]);
    } else {
        for (int d = 0; d < hd; ++d) acc += qs[d] * __bfloat162float(kr[d]);
    }
    return acc;
}

// The same attention with one lane per key instead of one warp per key: warp w takes the
// chunks of 32 keys w, w + DEC_WARPS, ...; lane j of a chunk scores key c0 + j with a whole-row
// dot product (q from shared memory, k rows read 16 bytes at a time where head_dim allows: 4 f32
// or 8 bf16 values, key_score), so a chunk costs one warp max and one warp sum where the
// warp-per-key kernel pays a 5-shuffle reduction per key. Then each lane updates its output
// dims over the chunk's keys, their weights broadcast by shuffles (independent, not a
// dependent chain). The warps merge in decode_merge_warps, as in decode_attention_rows. Same
// grid and block. T: the cache's element type (float, or __nv_bfloat16 for the _bf16_kv
// kernels).
template <typename T>
__device__ __forceinline__ void decode_attention_lane_rows(float* out, __nv_bfloat16* out16,
                                                           const float* q, const T* k_cache,
                                                           const T* v_cache,
                                                           const unsigned int* positions,
                                                           DecodeDims s, float scale) {
    __shared__ float4 qs4[DEC_MAX_HD / 4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.x, b = blockIdx.y;
    const int kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t kvd = (int64_t)s.n_kv_heads * hd;
    const int64_t at = ((int64_t)b * s.n_heads + h) * hd;
    if ((int64_t)positions[b] >= s.capacity) {  // caller bug: NaN instead of reading past the slot
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            out[at + d] = CUDART_NAN_F;
            if (out16) out16[at + d] = __float2bfloat16_rn(CUDART_NAN_F);
        }
        return;
    }
    const int len = (int)positions[b] + 1;
    float* qs = reinterpret_cast<float*>(qs4);  // q as floats, read back as float4 rows
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[at + d];
    __syncthreads();
    // 16-byte rows need head_dim a multiple of 16 bytes' worth of elements (then every row
    // offset is too) and a 16-byte aligned cache (a whole allocation is; checked so that a view
    // cannot fault)
    constexpr int per16 = 16 / (int)sizeof(T);
    const bool vec = hd % per16 == 0 && (reinterpret_cast<unsigned long long>(k_cache) & 15) == 0;
    float o[DEC_PER_LANE];
#pragma unroll
    for (int i = 0; i < DEC_PER_LANE; ++i) o[i] = 0.f;
    float m = -CUDART_INF_F, l = 0.f;
    const T* k_slot = k_cache + (int64_t)b * s.capacity * kvd + (int64_t)kh * hd;
    const T* v_slot = v_cache + (int64_t)b * s.capacity * kvd + (int64_t)kh * hd;
    for (int c0 = warp * 32; c0 < len; c0 += DEC_WARPS * 32) {
        const int j = c0 + lane;
        float score = -CUDART_INF_F;
        if (j < len) score = key_score(k_slot + (int64_t)j * kvd, qs, qs4, hd, vec) * scale;
        // c0 < len: the chunk holds at least one key, so its max is finite
        const float m_new = fmaxf(m, warp_max(score));
        const float alpha = expf(m - m_new);
        const float p = j < len ? expf(score - m_new) : 0.f;
        l = l * alpha + warp_sum(p);
        m = m_new;
#pragma unroll
        for (int i = 0; i < DEC_PER_LANE; ++i) o[i] *= alpha;
        const int keys = min(32, len - c0);  // the same for every lane of the warp
#pragma unroll 8
        for (int t = 0; t < keys; ++t) {
            const float pt = __shfl_sync(0xffffffffu, p, t);
            const T* vr = v_slot + (int64_t)(c0 + t) * kvd;
#pragma unroll
            for (int i = 0; i < DEC_PER_LANE; ++i) {
                const int d = lane + 32 * i;
                if (d < hd) o[i] += pt * cache_load(vr + d);
            }
        }
    }
    decode_merge_warps(out, out16, at, hd, m, l, o);
}

CADA_KERNEL void decode_attention_lane_per_key(float* out, const float* q, const float* k_cache,
                                               const float* v_cache,
                                               const unsigned int* positions, DecodeDims s,
                                               float scale) {
    decode_attention_lane_rows(out, nullptr, q, k_cache, v_cache, positions, s, scale);
}

CADA_KERNEL void decode_attention_lane_per_key_with_bf16(float* out, __nv_bfloat16* out16,
                                                         const float* q, const float* k_cache,
                                                         const float* v_cache,
                                                         const unsigned int* positions,
                                                         DecodeDims s, float scale) {
    decode_attention_lane_rows(out, out16, q, k_cache, v_cache, positions, s, scale);
}

// The same over a bf16 cache (CADA_KV_CACHE=bf16), and with the output's bf16 copy.
CADA_KERNEL void decode_attention_lane_per_key_bf16_kv(float* out, const float* q,
                                                       const __nv_bfloat16* k_cache,
                                                       const __nv_bfloat16* v_cache,
                                                       const unsigned int* positions,
                                                       DecodeDims s, float scale) {
    decode_attention_lane_rows(out, nullptr, q, k_cache, v_cache, positions, s, scale);
}

CADA_KERNEL void decode_attention_lane_per_key_bf16_kv_with_bf16(
    float* out, __nv_bfloat16* out16, const float* q, const __nv_bfloat16* k_cache,
    const __nv_bfloat16* v_cache, const unsigned int* positions, DecodeDims s, float scale) {
    decode_attention_lane_rows(out, out16, q, k_cache, v_cache, positions, s, scale);
}
