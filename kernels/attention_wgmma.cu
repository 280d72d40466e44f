// Causal GQA self-attention forward on Hopper's warpgroup MMA ("attention v3", sm_90a only):
// `wgmma.mma_async` bf16 → f32 with both operands of S = Q·Kᵀ and the B operand of O += P·V
// read by the tensor cores straight from shared memory through matrix descriptors, where
// mma.sync (attention_mma.cu) has every warp load its fragments with ldmatrix. Same buffers,
// layouts, scale and `lse` as attention_mma.cu's forward, whose backward kernels follow it.
//
// Block: two warpgroups (256 threads), 128 query rows; warpgroup w owns rows q0 + 64w .. +63,
// one m64 row block. Per 64-key tile, each warpgroup issues HDP/16 wgmma m64n64k16 for S (A = its
// Q rows, B = the K tile, both K-major), runs the online softmax on the accumulator (its layout
// per warp is mma.sync's C tile, so tensor_core_common.cuh's helpers serve both kernels), then
// four wgmma m64n{HDP}k16 for O += P·V with P from registers (packed to bf16, mma.sync's A
// fragment per warp) and B = the V tile read N-major (imm-trans-b), so V is staged exactly as K
// is. A tile above a warpgroup's diagonal is skipped by that warpgroup (uniformly, as wgmma
// requires). Each wgmma group is waited for at once: no overlap of softmax and MMA yet (FA3's
// ping-pong and producer warps are the next step, and want a GPU to time them).
//
// Shared memory holds every tile in the canonical no-swizzle ("interleaved") layout: 8 × 8
// bf16 core matrices of 128 contiguous bytes (row r of one at byte 16r), the HDP/8 core
// matrices of an 8-row block side by side (128 B apart), 8-row blocks HDP·16 B apart. K-major
// descriptors then have LBO = 128 (next 8 columns, the K direction) and SBO = HDP·16 (next 8
// rows); V read N-major has LBO = HDP·16 (next 8 keys, its K direction) and SBO = 128 (next 8
// dims). Tiles come in by cp.async as in attention_mma.cu (double-buffered K/V, zero-filled
// past T and head_dim), then `fence.proxy.async` makes them visible to the tensor cores.
//
// Built only into the sm_90a cubin (wgmma exists nowhere else); the compute_80 PTX gets a body
// that traps, and the host selects this kernel only on a 9.0 device.
#include "tensor_core_common.cuh"

#define WGMMA_THREADS 256  // two warpgroups
#define WGMMA_BQ 128       // query rows per block (64 per warpgroup)
#define WGMMA_BK 64        // keys per staged tile

#if defined(CADA_HOST_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CADA_HAS_WGMMA 1
#endif

#if !defined(CADA_HOST_EMULATION) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The warpgroup-MMA primitives (kernels/emulation/wgmma_primitives.h replaces exactly these).

// Orders this thread's register writes (accumulators, A fragments) before the next wgmma.
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N committed wgmma groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's shared-memory writes (generic proxy: stores, landed cp.async) visible
// to wgmma's reads (async proxy).
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Pins registers an MMA reads or writes asynchronously at this point of the program: the
// compiler sees wgmma's accumulators as written at issue, so without this it may move their
// reads above the wait (or writes below the fence); ptxas would then serialise or misorder.
template <int N>
__device__ __forceinline__ void pin_registers(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void pin_registers(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
// Matrix descriptor, no swizzle, base offset 0: start address, LBO and SBO in 16-byte units.
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    return (uint64_t)((a & 0x3ffff) >> 4) | ((uint64_t)((lbo & 0x3ffff) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3ffff) >> 4) << 32);
}

// d (+)= A·B, m64n64k16: A and B from shared memory, both K-major.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a,
                                                 uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
// d (+)= A·B, m64n64k16: A from registers (four bf16x2 per thread: each warp holds its 16 rows as
// mma.sync's A fragment), B from shared memory MN-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n64k16_rs_trans_b(float (&d)[32], const uint32_t a[4],
                                                        uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}
// d (+)= A·B, m64n128k16: A from registers (four bf16x2 per thread: each warp holds its 16 rows as
// mma.sync's A fragment), B from shared memory MN-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs_trans_b(float (&d)[64], const uint32_t a[4],
                                                        uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
          "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
          "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

#endif

// Stages rows [r0, r0 + ROWS) of one head (columns [col0, col0 + hd) of a [B·T, stride] bf16
// matrix, rows counted from `base` = b·T) into a ROWS × HDP tile in the core-matrix layout
// above; rows ≥ seq and columns ≥ hd become zeros. The chunk order takes pairs of 16-byte
// chunks of one row together (a 32-byte sector of global memory), then the 8 rows of a core
// matrix. With hd % 8 == 0 and a 16-byte aligned matrix each chunk is one cp.async (part of the
// caller's next commit group), else a synchronous copy; either way the tile is ready after
// the caller's cp_async_wait, fence_proxy_async and __syncthreads.
template <int ROWS, int HDP>
__device__ __forceinline__ void stage_core_matrices(uint16_t* dst, const uint16_t* src,
                                                    int64_t base, int r0, int seq,
                                                    int64_t stride, int col0, int hd) {
    constexpr int C8 = HDP / 8;  // chunks per row (even)
    const bool vec = (hd & 7) == 0 && ((uintptr_t)src & 15) == 0;
    for (int idx = threadIdx.x; idx < ROWS * C8; idx += WGMMA_THREADS) {
        const int pair = idx & 1, r8 = (idx >> 1) & 7, rest = idx >> 4;
        const int cb = 2 * (rest % (C8 / 2)) + pair, rb = rest / (C8 / 2);
        const int col = cb * 8, t = r0 + rb * 8 + r8;
        const bool in = t < seq && col < hd;
        const uint16_t* p = src + (in ? (base + t) * stride + col0 + col : 0);
        uint16_t* d = dst + rb * (HDP * 8) + cb * 64 + r8 * 8;
        if (vec) {
            cp_async_16(d, p, in);
        } else {
            uint32_t w[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t lo = in && col + 2 * e < hd ? p[2 * e] : 0;
                const uint32_t hi = in && col + 2 * e + 1 < hd ? p[2 * e + 1] : 0;
                w[e] = lo | (hi << 16);
            }
            *reinterpret_cast<uint4*>(d) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

// grid = (ceil(T / 128), Hq, B), 256 threads, dynamic smem (128 + 4·64)·HDP bf16: Q, then two
// slots of (K, V).
template <int HDP>
__device__ __forceinline__ void wgmma_forward_body(float* out, float* lse, const uint16_t* q,
                                                   const uint16_t* k, const uint16_t* v,
                                                   AttnDims s, float scale) {
#ifdef CADA_HAS_WGMMA
    constexpr int KS = HDP / 16, DN = HDP / 8, SN = WGMMA_BK / 8;
    constexpr uint32_t ROW_BLOCK = HDP * 16;  // bytes from one 8-row block to the next
    constexpr uint32_t CORE = 128;            // bytes from one core matrix to the next in a row block
    constexpr int KV_TILE = WGMMA_BK * HDP;   // elements of one K or V slot
    CADA_DYNAMIC_SMEM(uint4, attn_wgmma_smem);
    uint16_t* const sq = reinterpret_cast<uint16_t*>(attn_wgmma_smem);
    uint16_t* const kv_slots = sq + WGMMA_BQ * HDP;  // K0 V0 K1 V1
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, kh = h / (s.n_heads / s.n_kv_heads);
    const int hd = s.head_dim;
    const int64_t qs = (int64_t)s.n_heads * hd, ks = (int64_t)s.n_kv_heads * hd;
    const int64_t base = (int64_t)b * s.seq;
    const int q0 = blockIdx.x * WGMMA_BQ;
    const int g0 = q0 + wg * 64;                          // this warpgroup's first row
    const int rows[2] = {g0 + warp * 16 + g, g0 + warp * 16 + g + 8};
    const int glast = g0 < s.seq ? g0 + 63 : -1;          // keys past it are masked for the group
    const int last_key = min(s.seq - 1, q0 + WGMMA_BQ - 1);
    const int tiles = last_key / WGMMA_BK + 1;            // q0 < T, so last_key ≥ 0
    const float c2 = scale * LOG2E;
    auto stage_kv = [&](int tile, int slot) {
        uint16_t* sk = kv_slots + 2 * slot * KV_TILE;
        stage_core_matrices<WGMMA_BK, HDP>(sk, k, base, tile * WGMMA_BK, s.seq, ks, kh * hd, hd);
        stage_core_matrices<WGMMA_BK, HDP>(sk + KV_TILE, v, base, tile * WGMMA_BK, s.seq, ks,
                                           kh * hd, hd);
    };
    stage_core_matrices<WGMMA_BQ, HDP>(sq, q, base, q0, s.seq, qs, h * hd, hd);
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
        const uint16_t* sv = sk + KV_TILE;
        float sc[SN][4];  // the first MMA overwrites it (scale-d = 0)
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < KS; ++kk)  // 16 dims (two core matrices) per step
            wgmma_m64n64k16_ss(*reinterpret_cast<float(*)[4 * SN]>(&sc),
                               smem_desc(my_q + kk * 128, CORE, ROW_BLOCK),
                               smem_desc(sk + kk * 128, CORE, ROW_BLOCK), kk > 0);
        wgmma_commit();
        wgmma_wait<0>();
        pin_registers(*reinterpret_cast<float(*)[4 * SN]>(&sc));
        online_softmax_tile(sc, o, m, l, k0, rows, c, c2);
        // P as A fragments: the score tiles 2j, 2j + 1 are keys 16j .. 16j + 15
        uint32_t pa[WGMMA_BK / 16][4];
#pragma unroll
        for (int j = 0; j < WGMMA_BK / 16; ++j) {
            pa[j][0] = pack_bf16(sc[2 * j][0], sc[2 * j][1]);
            pa[j][1] = pack_bf16(sc[2 * j][2], sc[2 * j][3]);
            pa[j][2] = pack_bf16(sc[2 * j + 1][0], sc[2 * j + 1][1]);
            pa[j][3] = pack_bf16(sc[2 * j + 1][2], sc[2 * j + 1][3]);
        }
        pin_registers(*reinterpret_cast<float(*)[4 * DN]>(&o));
        pin_registers(*reinterpret_cast<uint32_t(*)[WGMMA_BK / 4]>(&pa));
        wgmma_fence();  // o was rescaled and pa written: both are read by the MMAs below
#pragma unroll
        for (int j = 0; j < WGMMA_BK / 16; ++j) {  // (all four: P is exactly 0 above the diagonal)
            const uint64_t dv = smem_desc(sv + j * 2 * HDP * 8, ROW_BLOCK, CORE);  // keys 16j..
            if constexpr (HDP == 64)
                wgmma_m64n64k16_rs_trans_b(*reinterpret_cast<float(*)[4 * DN]>(&o), pa[j], dv, 1);
            else
                wgmma_m64n128k16_rs_trans_b(*reinterpret_cast<float(*)[4 * DN]>(&o), pa[j], dv, 1);
        }
        wgmma_commit();
        wgmma_wait<0>();
        pin_registers(*reinterpret_cast<float(*)[4 * DN]>(&o));
    }
    write_forward_rows(out, lse, o, m, l, rows, s, base, b, h, c);
#else
    __trap();  // the compute_80 PTX: no wgmma before sm_90a (the host never launches this there)
#endif
}

// One entry point per padded head width; the host picks hd64 for head_dim ≤ 64, else hd128.
#define ATTN_WGMMA_KERNELS(HDP)                                                                \
    CADA_KERNEL void __launch_bounds__(WGMMA_THREADS, 1)                                       \
        attention_wgmma_forward_hd##HDP(float* out, float* lse, const uint16_t* q,             \
                                        const uint16_t* k, const uint16_t* v, AttnDims s,      \
                                        float scale) {                                         \
        wgmma_forward_body<HDP>(out, lse, q, k, v, s, scale);                                  \
    }

ATTN_WGMMA_KERNELS(64)
ATTN_WGMMA_KERNELS(128)
