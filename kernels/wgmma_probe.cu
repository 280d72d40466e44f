// The two warpgroup-MMA forms of attention_wgmma.cu, each run once on data the host chose, for
// a first GPU run to tell apart what can be wrong in them: d_ss = A·Bᵀ (m64n64k16, A 64×16 and
// B 64×16 both read from shared memory K-major) and d_rs = A·W (A from registers as fragments,
// W 16×64 read from shared memory N-major, imm-trans-b), each written row-major 64×64 from the
// accumulator layout. tests/attention_wgmma_cuda.rs compares them with the CPU's products: a
// wrong K-major descriptor fails d_ss alone, a wrong N-major one or A-fragment layout d_rs
// alone, a wrong accumulator layout both. Compute capability 9.0 only (the compute_80 PTX body
// traps).
#include "wgmma.cuh"

#define WGMMA_PROBE_THREADS 128  // one warpgroup

// grid 1, 128 threads, dynamic smem 3·1024 bf16; a, bt 64×16 and w 16×64 row-major bf16.
CADA_KERNEL void wgmma_layout_probe(float* d_ss, float* d_rs, const uint16_t* a,
                                   const uint16_t* bt, const uint16_t* w) {
#ifdef CADA_HAS_WGMMA
    CADA_DYNAMIC_SMEM(uint4, wgmma_probe_smem);
    uint16_t* const sa = reinterpret_cast<uint16_t*>(wgmma_probe_smem);  // 64 × 16
    uint16_t* const sb = sa + 64 * 16;                                   // 64 × 16
    uint16_t* const sw = sb + 64 * 16;                                   // 16 × 64
    stage_core_matrices<64, 16, WGMMA_PROBE_THREADS>(sa, a, 0, 0, 64, 16, 0, 16);
    stage_core_matrices<64, 16, WGMMA_PROBE_THREADS>(sb, bt, 0, 0, 64, 16, 0, 16);
    stage_core_matrices<16, 64, WGMMA_PROBE_THREADS>(sw, w, 0, 0, 16, 64, 0, 64);
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    uint32_t af[4];  // mma.sync's A fragment of this warp's 16 rows
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int row = 16 * warp + g + 8 * (j & 1), col = 2 * c + 8 * (j >> 1);
        af[j] = (uint32_t)a[row * 16 + col] | ((uint32_t)a[row * 16 + col + 1] << 16);
    }
    float dss[32], drs[32];
    wgmma_fence();
    // 16 columns: LBO = 128 (next 8 columns), SBO = 16·16 (next 8 rows); W: LBO = 64·16 (next 8
    // rows, its K direction), SBO = 128 (next 8 columns)
    wgmma_m64n64k16_ss(dss, smem_desc(sa, 128, 16 * 16), smem_desc(sb, 128, 16 * 16), 0);
    wgmma_m64n64k16_rs_trans_b(drs, af, smem_desc(sw, 64 * 16, 128), 0);
    wgmma_commit();
    wgmma_wait<0>();
    pin_registers(dss);
    pin_registers(drs);
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = 16 * warp + g + 8 * (i >> 1), col = 8 * n + 2 * c + (i & 1);
            d_ss[row * 64 + col] = dss[4 * n + i];
            d_rs[row * 64 + col] = drs[4 * n + i];
        }
#else
    __trap();
#endif
}
