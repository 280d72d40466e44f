// Hopper's warpgroup MMA for the attention kernels of attention_wgmma.cu: the PTX primitives
// (fence / commit / wait, the async-proxy fence, matrix descriptors, wgmma.mma_async in the
// three forms the kernels use), the staging of a tile into the no-swizzle core-matrix layout,
// and the two operand patterns every product of the kernels is one of. The primitives exist
// only for sm_90a; kernels/emulation/wgmma_primitives.h replaces them on the host.
//
// Core-matrix tile layout (ROWS × HDP bf16): 8 × 8 core matrices of 128 contiguous bytes (row
// r of one at byte 16r), the HDP/8 core matrices of an 8-row block side by side (CORE = 128 B
// apart), 8-row blocks ROW_BLOCK = HDP·16 B apart. Read K-major (rows = M or N, columns = K):
// LBO = CORE, SBO = ROW_BLOCK. Read N-major (rows = K, columns = N, imm-trans-b): LBO =
// ROW_BLOCK, SBO = CORE. (PTX ISA, "Shared Memory Matrix Layout", canonical layouts without
// swizzling.)
#pragma once
#include "tensor_core_common.cuh"

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
// above; rows ≥ seq and columns ≥ hd become zeros. The chunk order: 8 consecutive threads
// write the 8 rows of one core matrix (128 contiguous bytes: no bank conflict), the next 8 the
// next chunk of the same rows, so a warp still reads whole 32-byte sectors of each row. With hd % 8 == 0 and a 16-byte aligned matrix each chunk is one cp.async (part of the
// caller's next commit group), else a synchronous copy; either way the tile is ready after
// the caller's cp_async_wait, fence_proxy_async and __syncthreads.
template <int ROWS, int HDP, int THREADS>
__device__ __forceinline__ void stage_core_matrices(uint16_t* dst, const uint16_t* src,
                                                    int64_t base, int r0, int seq,
                                                    int64_t stride, int col0, int hd) {
    constexpr int C8 = HDP / 8;  // chunks per row (even)
    const bool vec = (hd & 7) == 0 && ((uintptr_t)src & 15) == 0;
    for (int idx = threadIdx.x; idx < ROWS * C8; idx += THREADS) {
        const int r8 = idx & 7, pair = (idx >> 3) & 1, rest = idx >> 4;
        const int cb = 2 * (rest % (C8 / 2)) + pair, rb = rest / (C8 / 2);
        const int col = cb * 8, t = r0 + rb * 8 + r8;
        const bool in = t < seq && col < hd;
        const uint16_t* p = src + (in ? (base + t) * stride + col0 + col : 0);
        uint16_t* d = dst + rb * (HDP * 8) + cb * 64 + r8 * 8;
        if (vec) {
            cp_async_16(d, p, in);
        } else {
            copy_chunk_zero_padded(d, p, in, col, hd);
        }
    }
}

#ifdef CADA_HAS_WGMMA
// acc (=)+= A·Bᵀ over HDP columns: A = 64 rows of a core-matrix tile, B = 64 rows of another,
// both read K-major (S = Q·Kᵀ, dP = dO·Vᵀ, Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ). The first k-step
// overwrites acc (scale-d = 0).
template <int HDP>
__device__ __forceinline__ void mma_rows_by_rows(float (&acc)[8][4], const uint16_t* a_rows,
                                                 const uint16_t* b_rows) {
    constexpr uint32_t ROW_BLOCK = HDP * 16, CORE = 128;
#pragma unroll
    for (int kk = 0; kk < HDP / 16; ++kk)  // 16 columns (two core matrices) per step
        wgmma_m64n64k16_ss(*reinterpret_cast<float(*)[32]>(&acc),
                           smem_desc(a_rows + kk * 128, CORE, ROW_BLOCK),
                           smem_desc(b_rows + kk * 128, CORE, ROW_BLOCK), kk > 0);
}

// acc += A·B: A = 64 × 64 in registers (a[j] = columns 16j .. 16j + 15 as A fragments), B = a
// 64-row core-matrix tile read N-major (O += P·V, dq += dS·K, dv += Pᵀ·dO, dk += dSᵀ·Q).
template <int HDP>
__device__ __forceinline__ void mma_regs_by_tile(float (&acc)[HDP / 8][4], const uint32_t (&a)[4][4],
                                                 const uint16_t* b_tile) {
    constexpr uint32_t ROW_BLOCK = HDP * 16, CORE = 128;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint64_t db = smem_desc(b_tile + j * 2 * HDP * 8, ROW_BLOCK, CORE);
        if constexpr (HDP == 64)
            wgmma_m64n64k16_rs_trans_b(*reinterpret_cast<float(*)[32]>(&acc), a[j], db, 1);
        else
            wgmma_m64n128k16_rs_trans_b(*reinterpret_cast<float(*)[64]>(&acc), a[j], db, 1);
    }
}

// A 64 × 64 accumulator as four A fragments of 16 columns (bf16, round to nearest even): an
// accumulator's 8-column tiles 2j, 2j + 1 are the A operand of columns 16j .. 16j + 15.
__device__ __forceinline__ void pack_a_fragments(uint32_t (&a)[4][4], const float (&x)[8][4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a[j][0] = pack_bf16(x[2 * j][0], x[2 * j][1]);
        a[j][1] = pack_bf16(x[2 * j][2], x[2 * j][3]);
        a[j][2] = pack_bf16(x[2 * j + 1][0], x[2 * j + 1][1]);
        a[j][3] = pack_bf16(x[2 * j + 1][2], x[2 * j + 1][3]);
    }
}

template <int N>
__device__ __forceinline__ void pin_accumulator(float (&x)[N][4]) {
    pin_registers(*reinterpret_cast<float(*)[4 * N]>(&x));
}
#endif
