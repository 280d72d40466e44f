// GRPO/DAPO/Dr.GRPO clipped-ratio loss with the k3 KL term (../shared/CADA.md step 7).
// Inputs [batch, len] right-padded; mask 1 = counted; advantages [batch].
// Forward: one block per completion writes 5 f64 row partials (Σm·loss, Σm·kl, Σm·clip_low,
// Σm·clip_high, Σm; GSPO: the row's clip indicators instead); the host divides by the loss
// type's denominator (the metric reduction).
// Backward: one block per completion; the denominators are recomputed on the device.
// With `sequence_level` (GSPO) the ratio is the completion's, exp of its mean log-ratio over
// the unmasked tokens (row_log_ratio), and the surrogate's gradient is spread over the row:
// dlogp_t = w_t·β·dKL_t + (Σ_t w_t)·dS/ds·m_t / max(Σ m, 1), as cpu/grpo_loss.rs.
#include "common.cuh"

#define GRPO_LOSS_GRPO 0
#define GRPO_LOSS_DAPO 1
#define GRPO_LOSS_DR_GRPO 2

struct GrpoParams {
    float epsilon_low, epsilon_high, beta;
    int use_ref;  // 0 when beta == 0: ref_logp is not read
    int loss_type;
    int max_completion_len;
    int sequence_level;  // 1: GSPO's per-completion ratio
    float delta;         // two-sided clipping: the unclipped ratio capped at delta (INFINITY: off)
};

struct TokenTerms {
    float loss, kl, dloss;
    bool low, high;
};

// The surrogate of one log-ratio: S, dS/d(log ratio), clipped low / high.
struct SurrogateTerms {
    float s, ds;
    bool low, high;
};

__device__ __forceinline__ SurrogateTerms surrogate_terms(float log_ratio, float adv,
                                                          const GrpoParams& p) {
    SurrogateTerms r;
    const float ratio = expf(log_ratio);
    const float clipped_ratio = fminf(fmaxf(ratio, 1.f - p.epsilon_low), 1.f + p.epsilon_high);
    // above delta (> 1 + epsilon_high) the unclipped branch is the constant delta·A
    const float unclipped = fminf(ratio, p.delta) * adv, clipped = clipped_ratio * adv;
    r.low = ratio < 1.f - p.epsilon_low && adv < 0.f;
    r.high = ratio > 1.f + p.epsilon_high && adv > 0.f;
    r.s = -fminf(unclipped, clipped);
    r.ds = (r.low || r.high || ratio > p.delta) ? 0.f : -unclipped;
    return r;
}

// Sequence level: the row's mean log-ratio over its unmasked tokens (f64 sums, then f32) and
// its mask count; every thread of the block calls it (block sums).
__device__ __forceinline__ float row_log_ratio(const float* logp, const float* old_logp,
                                               const float* mask, int64_t b, int len,
                                               double* count, double* scratch) {
    double sum = 0, c = 0;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const int64_t i = b * len + t;
        const double m = mask[i];
        if (m == 0.0) continue;  // padding may hold NaN
        sum += m * (double)(logp[i] - old_logp[i]);
        c += m;
    }
    sum = block_sum_d(sum, scratch);
    c = block_sum_d(c, scratch);
    *count = c;
    return (float)(sum / fmax(c, 1.0));
}

// seq_log_ratio: the completion's (sequence level) or NAN (token level). In sequence level the
// surrogate's gradient is not in dloss: the callers spread it over the row.
__device__ __forceinline__ TokenTerms token_terms(float logp, float old_logp, float ref_logp,
                                                  float adv, const GrpoParams& p,
                                                  float seq_log_ratio) {
    TokenTerms r;
    const bool seq = p.sequence_level != 0;
    const SurrogateTerms st = surrogate_terms(seq ? seq_log_ratio : logp - old_logp, adv, p);
    r.low = st.low;
    r.high = st.high;
    const float surrogate = st.s;
    const float dsurrogate = seq ? 0.f : st.ds;
    float kl = 0.f, dkl = 0.f;
    if (p.use_ref) {
        const float delta = ref_logp - logp;
        const float e = expf(delta);
        kl = e - delta - 1.f;
        dkl = 1.f - e;
    }
    r.loss = surrogate + p.beta * kl;
    r.kl = kl;
    r.dloss = dsurrogate + p.beta * dkl;
    return r;
}

// A block's 5 row sums (the whole block calls it), written by thread 0 to out[0..5]:
// Σ loss term, Σm·kl, Σm·clip_low, Σm·clip_high, Σm. With `per_completion` (GSPO, where every
// token of the row shares one ratio) the clip sums become the row's 0/1 indicators, so the
// host's metric is the share of clipped completions, as TRL logs it.
__device__ __forceinline__ void write_row_partials(double* out, double loss, double kl,
                                                   double low, double high, double count,
                                                   bool per_completion, double* scratch) {
    loss = block_sum_d(loss, scratch);
    kl = block_sum_d(kl, scratch);
    low = block_sum_d(low, scratch);
    high = block_sum_d(high, scratch);
    count = block_sum_d(count, scratch);
    if (per_completion) {
        low = low > 0.0 ? 1.0 : 0.0;
        high = high > 0.0 ? 1.0 : 0.0;
    }
    if (threadIdx.x == 0) {
        out[0] = loss;
        out[1] = kl;
        out[2] = low;
        out[3] = high;
        out[4] = count;
    }
}

// grid.x = batch; partials [batch, 5].
CADA_KERNEL void grpo_loss_forward(double* partials, const float* logp, const float* old_logp,
                                   const float* ref_logp, const float* mask,
                                   const float* advantages, int len, GrpoParams p) {
    __shared__ double scratch[32];
    const int64_t b = blockIdx.x;
    const float adv = advantages[b];
    double row_count;
    const float seq = p.sequence_level
                          ? row_log_ratio(logp, old_logp, mask, b, len, &row_count, scratch)
                          : NAN;
    double loss = 0, kl = 0, low = 0, high = 0, count = 0;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const int64_t i = b * len + t;
        const double m = mask[i];
        if (m == 0.0) continue;  // padding log-probs may be garbage: never read them into a sum
        const TokenTerms r =
            token_terms(logp[i], old_logp[i], p.use_ref ? ref_logp[i] : 0.f, adv, p, seq);
        loss += m * r.loss;
        kl += m * r.kl;
        low += m * (double)r.low;
        high += m * (double)r.high;
        count += m;
    }
    write_row_partials(partials + b * 5, loss, kl, low, high, count, p.sequence_level != 0,
                       scratch);
}

// Backward step 1: row_count[b] = Σ_t mask[b, t] (one block per row).
CADA_KERNEL void grpo_mask_count(double* row_count, const float* mask, int len) {
    __shared__ double scratch[32];
    const int64_t b = blockIdx.x;
    double c = 0;
    for (int t = threadIdx.x; t < len; t += blockDim.x) c += mask[b * len + t];
    c = block_sum_d(c, scratch);
    if (threadIdx.x == 0) row_count[b] = c;
}

// Backward step 2: dlogp = weight·dloss, weight = mask/denominator (grpo: per-row count × batch;
// dapo: total count; dr_grpo: batch × max_completion_len). grid.x = batch.
CADA_KERNEL void grpo_loss_backward(float* dlogp, const float* logp, const float* old_logp,
                                    const float* ref_logp, const float* mask,
                                    const float* advantages, const double* row_count, int batch,
                                    int len, GrpoParams p) {
    __shared__ double scratch[32];
    const int64_t b = blockIdx.x;
    double denom;
    if (p.loss_type == GRPO_LOSS_GRPO) {
        denom = fmax(row_count[b], 1.0) * (double)batch;
    } else if (p.loss_type == GRPO_LOSS_DAPO) {
        double total = 0;
        for (int i = threadIdx.x; i < batch; i += blockDim.x) total += row_count[i];
        denom = fmax(block_sum_d(total, scratch), 1.0);
    } else {
        denom = (double)batch * (double)max(p.max_completion_len, 1);
    }
    const float adv = advantages[b];
    double spread = 0;  // sequence level: (Σ_t w_t)·dS/ds / max(Σ m, 1)
    float seq = NAN;
    if (p.sequence_level) {
        double c;
        seq = row_log_ratio(logp, old_logp, mask, b, len, &c, scratch);
        spread = c / denom * (double)surrogate_terms(seq, adv, p).ds / fmax(c, 1.0);
    }
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const int64_t i = b * len + t;
        const float m = mask[i];
        if (m == 0.f) {
            dlogp[i] = 0.f;
            continue;
        }
        const TokenTerms r =
            token_terms(logp[i], old_logp[i], p.use_ref ? ref_logp[i] : 0.f, adv, p, seq);
        const double own = (double)m / denom * (double)r.dloss;
        dlogp[i] = p.sequence_level ? (float)(own + spread * (double)m) : (float)own;
    }
}

// ---- the fused pass: forward and backward together ---------------------------------------
// One launch per call (two for dapo) and one read of the four token grids, instead of the
// forward's and the backward's two reads and four launches. Each block walks its completion
// once, writes dlogp = grad_scale · weight · dloss and the row's partials (Σ weight·loss, Σm·kl,
// Σm·clip_low, Σm·clip_high, Σm), weight = mask / denominator as in grpo_loss_backward.
// grpo counts its own row's mask first (the row is then in cache for the main pass); dapo needs
// the whole batch's count, from grpo_mask_count (`row_count`, unread otherwise); dr_grpo's
// denominator is a constant. The last block to finish (a ticket taken after a fence) sums the
// partials into `sums[5]`; its atomicInc leaves the ticket at 0 for the next call. grid.x = batch.
CADA_KERNEL void grpo_loss_fused(float* dlogp, double* partials, double* sums,
                                 unsigned int* ticket, const float* logp, const float* old_logp,
                                 const float* ref_logp, const float* mask,
                                 const float* advantages, const double* row_count, int batch,
                                 int len, GrpoParams p, float grad_scale) {
    __shared__ double scratch[32];
    __shared__ bool is_last;
    const int64_t b = blockIdx.x;
    double denom;
    if (p.loss_type == GRPO_LOSS_GRPO) {
        double c = 0;
        for (int t = threadIdx.x; t < len; t += blockDim.x) c += mask[b * len + t];
        denom = fmax(block_sum_d(c, scratch), 1.0) * (double)batch;
    } else if (p.loss_type == GRPO_LOSS_DAPO) {
        double total = 0;
        for (int i = threadIdx.x; i < batch; i += blockDim.x) total += row_count[i];
        denom = fmax(block_sum_d(total, scratch), 1.0);
    } else {
        denom = (double)batch * (double)max(p.max_completion_len, 1);
    }
    const float adv = advantages[b];
    double spread = 0;  // as grpo_loss_backward
    float seq = NAN;
    if (p.sequence_level) {
        double c;
        seq = row_log_ratio(logp, old_logp, mask, b, len, &c, scratch);
        spread = c / denom * (double)surrogate_terms(seq, adv, p).ds / fmax(c, 1.0);
    }
    double loss = 0, kl = 0, low = 0, high = 0, count = 0;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const int64_t i = b * len + t;
        const float m = mask[i];
        if (m == 0.f) {
            dlogp[i] = 0.f;  // padding: never read its (possibly garbage) log-probs
            continue;
        }
        const TokenTerms r =
            token_terms(logp[i], old_logp[i], p.use_ref ? ref_logp[i] : 0.f, adv, p, seq);
        const double w = (double)m / denom;
        // the same rounding as grpo_loss_backward followed by a scale, so the two paths agree
        const double own = w * (double)r.dloss;
        dlogp[i] = (p.sequence_level ? (float)(own + spread * (double)m) : (float)own) * grad_scale;
        loss += w * r.loss;
        kl += (double)m * r.kl;
        low += (double)m * (double)r.low;
        high += (double)m * (double)r.high;
        count += (double)m;
    }
    write_row_partials(partials + b * 5, loss, kl, low, high, count, p.sequence_level != 0,
                       scratch);
    if (threadIdx.x == 0) {  // the thread that wrote the partials
        __threadfence();  // the partials are visible device-wide before the ticket is taken
        // atomicInc wraps the ticket to 0 on the last arrival: ready for the next call
        is_last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;  // uniform within the block
    // the metrics reduction, by the one block that saw every other block's ticket
    __threadfence();
    for (int c = 0; c < 5; ++c) {
        double acc = 0;
        // __ldcg: read through L2, never a stale L1 line of another block's write
        for (int r = threadIdx.x; r < batch; r += blockDim.x)
            acc += __ldcg(partials + (int64_t)r * 5 + c);
        acc = block_sum_d(acc, scratch);
        if (threadIdx.x == 0) sums[c] = acc;
    }
}

// ---- group-relative advantages (../shared/CADA.md step 6; CPU twin: group_advantages) ----
#define SCALE_GROUP 0
#define SCALE_BATCH 1
#define SCALE_NONE 2

// rewards [groups · group_size], G completions of one prompt adjacent. One block: the batch is
// rows, not tokens (thousands at most), and every statistic needs all of it.
// stats[0..4] = batch mean, batch population std, groups with all-equal rewards, and 1 + the
// index of the first non-finite reward (0 if none, so the zeroed buffer never reads as an error;
// on an error nothing else is written).
// A group whose rewards all compare equal (==, so -0 == +0, as on the CPU) gets exactly 0; other groups divide the centred
// reward by (group std + eps), (batch std + eps) or 1. Population std (squares over n), or with
// `unbiased` TRL's (over n − 1; one value's std is 0), f64, each group summed in member order
// like the CPU reference.
CADA_KERNEL void grpo_advantages(float* adv, double* stats, const float* rewards, int n,
                                 int group_size, int scale, int unbiased, float eps) {
    __shared__ double scratch[32];
    __shared__ int iscratch[32];
    int bad = 0x7fffffff;
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float r = rewards[i];
        if (!isfinite(r)) bad = min(bad, i);
        else s += r;
    }
    bad = block_min_int(bad, iscratch);
    if (bad != 0x7fffffff) {
        if (threadIdx.x == 0) stats[3] = (double)bad + 1.0;
        return;  // uniform across the block: no thread is left waiting at a barrier
    }
    const double mean = block_sum_d(s, scratch) / n;
    double sq = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = (double)rewards[i] - mean;
        sq += d * d;
    }
    const double batch_std = sqrt(block_sum_d(sq, scratch) / (unbiased && n > 1 ? n - 1 : n));
    const int groups = n / group_size;
    double zero_std = 0;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        const float* r = rewards + (int64_t)g * group_size;
        float* a = adv + (int64_t)g * group_size;
        bool all_equal = true;
        double gs = 0;
        for (int j = 0; j < group_size; ++j) {
            all_equal = all_equal && r[j] == r[0];
            gs += r[j];
        }
        if (all_equal) {
            zero_std += 1;
            for (int j = 0; j < group_size; ++j) a[j] = 0.f;
            continue;
        }
        const double gmean = gs / group_size;
        double gv = 0;
        for (int j = 0; j < group_size; ++j) {
            const double d = (double)r[j] - gmean;
            gv += d * d;
        }
        // not all equal: group_size ≥ 2, so n − 1 ≥ 1
        const int dof = unbiased ? group_size - 1 : group_size;
        const double divisor = scale == SCALE_GROUP   ? sqrt(gv / dof) + (double)eps
                               : scale == SCALE_BATCH ? batch_std + (double)eps
                                                      : 1.0;
        for (int j = 0; j < group_size; ++j) a[j] = (float)(((double)r[j] - gmean) / divisor);
    }
    zero_std = block_sum_d(zero_std, scratch);
    if (threadIdx.x == 0) {
        stats[0] = mean;
        stats[1] = batch_std;
        stats[2] = zero_std;
        stats[3] = 0.0;
    }
}
