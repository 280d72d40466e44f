// Token sampling on the device with the host-drawn uniforms, reproducing the CPU reference
// (src/backend/cpu/sampling.rs) without sorting the vocabulary:
//   z = (x − max)/T in f32, p = exp(z) in f64, tokens ordered by (p desc, index asc);
//   keep the first top_k; then the shortest prefix whose mass reaches top_p; then the first
//   token whose cumulative mass exceeds u·(kept mass).
// Each "first token in sorted order whose running total reaches a target" is found by a radix
// select over the f32 bit pattern of t = −z ≥ 0 (p is monotone in t, and the bits of
// non-negative floats are ordered like their values), 4 bits a pass, then a scan in index order
// over the tokens tied at the found t.
// One block of SAMPLE_THREADS per row; `t_scratch` (f32) and `p_scratch` (f64) are [batch,
// vocab]: t and p = exp(−t) are computed once per token and read by every pass, so the ~35
// passes of a draw (more with top-k / top-p) do no f64 exp (the double-precision pipe made each
// pass cost ~6 µs of exps at a 49k vocabulary, where reading t and p costs ~3 µs).
#include "common.cuh"
#include <limits.h>

// 256 threads: the per-thread digit histograms (SAMPLE_BINS doubles each) fit in 32 KiB of
// shared memory
#define SAMPLE_THREADS 256
#define SAMPLE_RADIX_BITS 4
#define SAMPLE_BINS 16

// The kept set: tokens before (bt, bi) in sorted order, inclusive.
struct Kept {
    float bt;
    int bi;
};

__device__ __forceinline__ bool is_kept(float t, int i, Kept k) {
    return t < k.bt || (t == k.bt && i <= k.bi);
}

__device__ __forceinline__ double weight(const double* pr, int i, bool count) {
    return count ? 1.0 : pr[i];
}

// Σ over kept tokens with t ≤ tv (or t < tv when `strictly_below`) of the weight.
__device__ double total_upto(const float* tr, const double* pr, int vocab, Kept k, float tv,
                             bool strictly_below, bool count, double* scratch) {
    double acc = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float t = tr[i];
        const bool in = strictly_below ? t < tv : t <= tv;
        if (in && is_kept(t, i, k)) acc += weight(pr, i, count);
    }
    return block_sum_d(acc, scratch);
}

__device__ __forceinline__ bool reaches(double running, double target, bool strict) {
    return strict ? running > target : running >= target;
}

// First kept token, in sorted order, at which the running total of weights reaches the target.
// Returns false when even the whole kept set does not reach it.
// The boundary value tv (the smallest t whose inclusive running total reaches the target) is
// found digit by digit of its f32 bit pattern, most significant first, SAMPLE_RADIX_BITS at a
// time: each pass sums the kept weight of every digit value among the tokens whose higher bits
// match the digits found so far, and takes the first digit whose running total reaches the
// target: 8 passes over the row where bisection took 31. Each thread sums into its own row of
// `hist` (no atomics), and every sum is taken in a fixed order, so a draw is reproducible.
__device__ bool select_token(const float* tr, const double* pr, int vocab, Kept k, double target,
                             bool count, bool strict, Kept* found, double* scratch, double* scan,
                             double* hist) {
    __shared__ int first, last_tie;
    __shared__ double bin_total[SAMPLE_BINS];
    __shared__ unsigned chosen_digit;
    __shared__ double chosen_before;
    if (!reaches(total_upto(tr, pr, vocab, k, CUDART_INF_F, false, count, scratch), target,
                 strict))
        return false;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // t ≥ 0 (t = 0 − z, z ≤ 0), so the sign bit is known: 0
    unsigned prefix = 0, fixed = 0x80000000u;
    double before = 0;  // kept weight of the tokens whose bits sort below the prefix's range
    for (int top = 31; top > 0;) {
        const int width = top < SAMPLE_RADIX_BITS ? top : SAMPLE_RADIX_BITS;
        const int shift = top - width;
        const unsigned digits = 1u << width;
        for (int d = 0; d < SAMPLE_BINS; ++d) hist[d * blockDim.x + threadIdx.x] = 0.0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float t = tr[i];
            const unsigned bits = __float_as_uint(t);
            if ((bits & fixed) == prefix && is_kept(t, i, k))
                hist[((bits >> shift) & (digits - 1)) * blockDim.x + threadIdx.x] +=
                    weight(pr, i, count);
        }
        __syncthreads();
        // digit totals: one warp per digit, lanes over threads in a fixed order, then a tree
        for (int d = warp; d < (int)digits; d += warps) {
            double acc = 0;
            for (int j = lane; j < (int)blockDim.x; j += 32) acc += hist[d * blockDim.x + j];
            acc = warp_sum_d(acc);
            if (lane == 0) bin_total[d] = acc;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double cum = before;
            unsigned pick = digits;
            for (unsigned d = 0; d < digits; ++d) {
                if (reaches(cum + bin_total[d], target, strict)) {
                    pick = d;
                    break;
                }
                cum += bin_total[d];
            }
            if (pick == digits) {
                // rounding: the digit sums fell short of the first pass's total; take the last
                // digit that holds any kept weight (the bisection's "last tie" in spirit)
                cum = before;
                for (unsigned d = 0; d < digits; ++d)
                    if (bin_total[d] > 0.0) pick = d;
                if (pick == digits) pick = 0;
                for (unsigned d = 0; d < pick; ++d) cum += bin_total[d];
            }
            chosen_digit = pick;
            chosen_before = cum;
        }
        __syncthreads();
        prefix |= chosen_digit << shift;
        fixed |= (digits - 1) << shift;
        before = chosen_before;
        top = shift;
        __syncthreads();  // chosen_* and hist are rewritten by the next pass
    }
    const float tv = __uint_as_float(prefix);
    if (threadIdx.x == 0) last_tie = 0;
    // Tokens tied at tv are ordered by index: an inclusive block scan per tile of indices.
    for (int base = 0; base < vocab; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const bool tie = i < vocab && tr[i] == tv && is_kept(tr[i], i, k);
        __syncthreads();
        scan[threadIdx.x] = tie ? weight(pr, i, count) : 0.0;
        if (threadIdx.x == 0) first = INT_MAX;
        __syncthreads();
        for (int off = 1; off < blockDim.x; off <<= 1) {
            const double add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0.0;
            __syncthreads();
            scan[threadIdx.x] += add;
            __syncthreads();
        }
        if (tie && reaches(before + scan[threadIdx.x], target, strict)) atomicMin(&first, i);
        if (tie) atomicMax(&last_tie, i);
        __syncthreads();
        if (first != INT_MAX) {
            found->bt = tv;
            found->bi = first;
            return true;
        }
        before += scan[blockDim.x - 1];
    }
    // Rounding left the target between the bisection's total and the tie scan: take the last tie.
    found->bt = tv;
    found->bi = last_tie;
    return true;
}

// grid.x = batch, block = SAMPLE_THREADS.
CADA_KERNEL void sample_rows(unsigned int* tokens, float* t_scratch, double* p_scratch,
                             const float* logits, const float* uniforms, int vocab,
                             float temperature, float top_p, int top_k) {
    __shared__ float fscratch[32];
    __shared__ double scratch[32];
    __shared__ double scan[SAMPLE_THREADS];
    __shared__ double hist[SAMPLE_BINS * SAMPLE_THREADS];
    // scan and hist hold one slot per thread, the warp reductions need whole warps
    if (blockDim.x > SAMPLE_THREADS || blockDim.x < 32 || blockDim.x % 32 != 0) __trap();
    __shared__ float best_val[32];
    __shared__ int best_idx[32];
    const int64_t row = blockIdx.x;
    const float* x = logits + row * vocab;
    float* tr = t_scratch + row * vocab;
    double* pr = p_scratch + row * vocab;

    if (temperature <= 0.f) {
        // argmax, lowest index on ties
        float bv = -CUDART_INF_F;
        int bi = INT_MAX;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            if (x[i] > bv || (bi == INT_MAX && x[i] == bv)) {
                bv = x[i];
                bi = i;
            }
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if ((threadIdx.x & 31) == 0) {
            best_val[threadIdx.x >> 5] = bv;
            best_idx[threadIdx.x >> 5] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
                if (best_val[w] > bv || (best_val[w] == bv && best_idx[w] < bi)) {
                    bv = best_val[w];
                    bi = best_idx[w];
                }
            tokens[row] = bi == INT_MAX ? 0u : (unsigned int)bi;
        }
        return;
    }

    float m = -CUDART_INF_F;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, x[i]);
    m = block_max(m, fscratch);
    // t = 0 − z keeps +0 for the max token (−z would give −0, whose bits sort last)
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float t = 0.f - (x[i] - m) / temperature;
        tr[i] = t;
        pr[i] = exp(-(double)t);  // the CPU's p = exp(f64(z)), z = −t exactly
    }
    __syncthreads();

    Kept kept = {CUDART_INF_F, INT_MAX};
    Kept boundary;
    if (top_k > 0 && top_k < vocab &&
        select_token(tr, pr, vocab, kept, (double)top_k, true, false, &boundary, scratch, scan,
                     hist))
        kept = boundary;
    if (top_p < 1.f) {
        const double total = total_upto(tr, pr, vocab, kept, CUDART_INF_F, false, false, scratch);
        if (select_token(tr, pr, vocab, kept, (double)top_p * total, false, false, &boundary,
                         scratch, scan, hist))
            kept = boundary;
    }
    const double total = total_upto(tr, pr, vocab, kept, CUDART_INF_F, false, false, scratch);
    Kept pick;
    if (!select_token(tr, pr, vocab, kept, (double)uniforms[row] * total, false, true, &pick,
                      scratch, scan, hist)) {
        // u·total ≥ the whole kept mass (rounding): the CPU returns the last kept token.
        const double n_kept = total_upto(tr, pr, vocab, kept, CUDART_INF_F, false, true, scratch);
        select_token(tr, pr, vocab, kept, n_kept, true, false, &pick, scratch, scan, hist);
    }
    if (threadIdx.x == 0) tokens[row] = (unsigned int)pick.bi;
}
