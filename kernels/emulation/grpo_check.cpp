// Runs kernels/grpo_loss.cu, unchanged, in the host emulation (cuda_runtime.h) and compares it
// with a transcription of the CPU reference (src/backend/cpu/grpo_loss.rs and
// grpo_advantages.rs): the fused pass (dlogp · grad_scale and the five metric sums reduced by
// the last block, its ticket back at 0), the separate forward and backward, for every loss
// type with β = 0 and β > 0, over rows longer than a block, a fully masked row and NaN in the
// padding (which must never be read), token- and sequence-level (GSPO) ratios; and the
// group-relative advantages for every scaling and both stds,
// with all-equal groups and a non-finite reward's index. Blocks run one after another here, in
// a random order per launch, so the last-block ticket is taken by a different block each call,
// but never raced (no two blocks run at once). Exit status 1 on any failure.
#define CADA_HOST_EMULATION
#include "cuda_runtime.h"
#include "harness.h"
#include "math_constants.h"

#include "../grpo_loss.cu"

#include <cstdio>
#include <random>

namespace {

// f32 token terms, f64 sums in a different order than the kernel's block reduction
constexpr double kTol = 1e-6;

struct Ref {
    std::vector<float> dlogp;  // unscaled
    double sums[5];            // Σ w·loss, Σ m·kl, Σ m·low, Σ m·high, Σ m (GSPO: rows clipped)
};

// grpo_loss.rs: token_weights, token_terms, grpo_loss_forward / _backward.
Ref reference(const std::vector<float>& logp, const std::vector<float>& old_logp,
              const std::vector<float>& ref_logp, const std::vector<float>& mask,
              const std::vector<float>& adv, int batch, int len, const GrpoParams& p) {
    std::vector<double> w((size_t)batch * len, 0.0);
    if (p.loss_type == GRPO_LOSS_GRPO) {
        for (int b = 0; b < batch; ++b) {
            double count = 0;
            for (int t = 0; t < len; ++t) count += mask[(size_t)b * len + t];
            const double denom = std::max(count, 1.0) * batch;
            for (int t = 0; t < len; ++t) w[(size_t)b * len + t] = mask[(size_t)b * len + t] / denom;
        }
    } else {
        double denom;
        if (p.loss_type == GRPO_LOSS_DAPO) {
            double count = 0;
            for (float m : mask) count += m;
            denom = std::max(count, 1.0);
        } else {
            denom = (double)batch * std::max(p.max_completion_len, 1);
        }
        for (size_t i = 0; i < w.size(); ++i) w[i] = mask[i] / denom;
    }
    Ref r{std::vector<float>(w.size(), 0.f), {0, 0, 0, 0, 0}};
    for (int b = 0; b < batch; ++b) {
        // sequence level: the row's mean log-ratio, and its surrogate's gradient spread over the
        // row (Σ_t w_t · dS/ds / max(Σ m, 1) per unit of mask)
        double lr_sum = 0, count = 0, w_row = 0;
        for (int t = 0; t < len; ++t) {
            const size_t i = (size_t)b * len + t;
            if (mask[i] == 0.f) continue;
            lr_sum += mask[i] * (double)(logp[i] - old_logp[i]);
            count += mask[i];
            w_row += w[i];
        }
        const float seq = (float)(lr_sum / std::max(count, 1.0));
        double spread = 0;
        if (p.sequence_level) {
            const float sr = std::exp(seq);
            const bool lo = sr < 1.f - p.epsilon_low && adv[b] < 0.f;
            const bool hi = sr > 1.f + p.epsilon_high && adv[b] > 0.f;
            const bool capped = sr > p.delta;
            spread = w_row * (double)((lo || hi || capped) ? 0.f : -(sr * adv[b])) /
                     std::max(count, 1.0);
        }
        for (int t = 0; t < len; ++t) {
            const size_t i = (size_t)b * len + t;
            const double m = mask[i];
            if (m == 0.0) continue;
            const float ratio = std::exp(p.sequence_level ? seq : logp[i] - old_logp[i]);
            const float cr = std::clamp(ratio, 1.f - p.epsilon_low, 1.f + p.epsilon_high);
            const float un = std::min(ratio, p.delta) * adv[b], cl = cr * adv[b];
            const bool low = ratio < 1.f - p.epsilon_low && adv[b] < 0.f;
            const bool high = ratio > 1.f + p.epsilon_high && adv[b] > 0.f;
            const float surrogate = -std::min(un, cl);
            const float dsur = p.sequence_level || low || high || ratio > p.delta ? 0.f : -un;
            float kl = 0.f, dkl = 0.f;
            if (p.beta != 0.f) {
                const float delta = ref_logp[i] - logp[i];
                const float e = std::exp(delta);
                kl = e - delta - 1.f;
                dkl = 1.f - e;
            }
            const float loss = surrogate + p.beta * kl, dloss = dsur + p.beta * dkl;
            r.dlogp[i] = (float)(w[i] * dloss + spread * m);
            r.sums[0] += w[i] * loss;
            r.sums[1] += m * kl;
            r.sums[2] += p.sequence_level ? 0.0 : m * low;
            r.sums[3] += p.sequence_level ? 0.0 : m * high;
            r.sums[4] += m;
        }
        if (p.sequence_level) {  // one indicator per completion that has a counted token
            double any = 0;
            for (int t = 0; t < len; ++t) any += mask[(size_t)b * len + t];
            const float sr = std::exp(seq);
            r.sums[2] += any > 0 && sr < 1.f - p.epsilon_low && adv[b] < 0.f;
            r.sums[3] += any > 0 && sr > 1.f + p.epsilon_high && adv[b] > 0.f;
        }
    }
    return r;
}

double rel(double got, double want) {
    if (!std::isfinite(got)) return INFINITY;
    return std::abs(got - want) / std::max(std::abs(want), 1e-30);
}

double rel_vec(const std::vector<float>& got, const std::vector<float>& want, float scale) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        const double wv = (double)want[i] * scale;
        num += (got[i] - wv) * (got[i] - wv);
        den += wv * wv;
    }
    return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

bool loss_case(std::mt19937_64& rng, int batch, int len, int loss_type, float beta, int seq,
               bool two_sided) {
    std::uniform_real_distribution<float> u(0.f, 1.f);
    const size_t n = (size_t)batch * len;
    std::vector<float> logp(n), old_logp(n), ref_logp(n), mask(n), adv(batch);
    for (int b = 0; b < batch; ++b) {
        adv[b] = 2.f * u(rng) - 1.f;
        const int valid = b == 1 ? 0 : b == 2 ? len : 1 + (int)(u(rng) * (len - 1));
        for (int t = 0; t < len; ++t) {
            const size_t i = (size_t)b * len + t;
            // ratios spread across both clip bounds (ε = 0.2 / 0.28)
            old_logp[i] = -4.f * u(rng);
            logp[i] = old_logp[i] + 0.8f * (u(rng) - 0.5f);
            ref_logp[i] = logp[i] + 0.5f * (u(rng) - 0.5f);
            mask[i] = t < valid ? 1.f : 0.f;
            if (t >= valid) logp[i] = old_logp[i] = ref_logp[i] = NAN;  // never read
        }
    }
    // GSPO's ratio of a mean log-ratio sits nearer 1: a narrower clip range puts rows on both sides
    const float eps = seq ? 0.04f : 0.2f;
    // two-sided clipping: a cap just above the clip range, which some ratios pass
    const float delta = !two_sided ? INFINITY : seq ? 1.05f : 1.3f;
    GrpoParams p{eps, seq ? eps : 0.28f, beta, beta != 0.f ? 1 : 0, loss_type, len, seq, delta};
    const Ref want = reference(logp, old_logp, ref_logp, mask, adv, batch, len, p);
    const dim3 grid{(unsigned)batch, 1, 1}, block{256, 1, 1};

    std::vector<double> row_count(batch, NAN);
    if (loss_type == GRPO_LOSS_DAPO)
        emu::launch(grid, block, [&] { grpo_mask_count(row_count.data(), mask.data(), len); });
    const float grad_scale = 0.37f;
    std::vector<float> dlogp(n, NAN);
    std::vector<double> partials((size_t)batch * 5, NAN), sums(5, NAN);
    unsigned ticket = 0;
    // Three calls on one ticket, each in a fresh block order: the block that finishes last, and
    // so takes the last ticket and reduces, changes. Each call must leave the ticket at 0, write
    // `sums` only in the last block to run (still NaN after every earlier one), and give the
    // same bits (the reducer sums the partials in one fixed order, whichever block it is).
    std::vector<double> first_sums;
    bool reduced_last = true;
    std::vector<unsigned> reducers;
    for (int call = 0; call < 3; ++call) {
        std::fill(dlogp.begin(), dlogp.end(), NAN);
        std::fill(partials.begin(), partials.end(), NAN);
        std::fill(sums.begin(), sums.end(), NAN);
        int ran = 0;
        emu::launch(
            grid, block,
            [&] {
                grpo_loss_fused(dlogp.data(), partials.data(), sums.data(), &ticket, logp.data(),
                                old_logp.data(), ref_logp.data(), mask.data(), adv.data(),
                                row_count.data(), batch, len, p, grad_scale);
            },
            {},
            [&] {
                ++ran;
                if (!std::isnan(sums[4])) {
                    if (ran != batch || reducers.size() != (size_t)call) reduced_last = false;
                    if (reducers.size() == (size_t)call) reducers.push_back(emu::running_block.x);
                }
            });
        reduced_last = reduced_last && ticket == 0 && reducers.size() == (size_t)call + 1;
        if (call == 0) first_sums = sums;
        reduced_last = reduced_last && std::memcmp(first_sums.data(), sums.data(), 5 * sizeof(double)) == 0;
    }
    // the separate forward (host sums its partials) and backward
    std::vector<double> fpart((size_t)batch * 5, NAN);
    emu::launch(grid, block, [&] {
        grpo_loss_forward(fpart.data(), logp.data(), old_logp.data(), ref_logp.data(),
                          mask.data(), adv.data(), len, p);
    });
    if (loss_type != GRPO_LOSS_DAPO)
        emu::launch(grid, block, [&] { grpo_mask_count(row_count.data(), mask.data(), len); });
    std::vector<float> dsep(n, NAN);
    emu::launch(grid, block, [&] {
        grpo_loss_backward(dsep.data(), logp.data(), old_logp.data(), ref_logp.data(),
                           mask.data(), adv.data(), row_count.data(), batch, len, p);
    });
    // the forward's partial 0 is Σ m·loss: the host divides by the loss type's denominator
    double f_m_loss = 0, f_count = 0;
    for (int b = 0; b < batch; ++b) f_m_loss += fpart[(size_t)b * 5], f_count += fpart[(size_t)b * 5 + 4];

    const char* names[] = {"grpo", "dapo", "dr_grpo"};
    bool ok = ticket == 0 && reduced_last;
    double worst = rel_vec(dlogp, want.dlogp, grad_scale);
    ok = ok && worst <= kTol;
    for (int c = 0; c < 5; ++c) {
        const double e = rel(sums[c], want.sums[c]);
        worst = std::max(worst, e);
        ok = ok && e <= kTol;
    }
    ok = ok && sums[4] == want.sums[4];  // the token count is exact
    const double sep = rel_vec(dsep, want.dlogp, 1.f);
    ok = ok && sep <= kTol && f_count == want.sums[4] && std::isfinite(f_m_loss);
    std::printf("  %-7s %s%s β %.2f, %d × %d: fused ≤ %.1e, separate backward %.1e, ticket %u, "
                "reduced by block",
                names[loss_type], seq ? "seq  " : "token", two_sided ? " δ" : "  ", beta, batch, len,
                worst, sep, ticket);
    for (unsigned r : reducers) std::printf(" %u", r);
    std::printf(" (last to run%s)%s\n", reduced_last ? ", same bits" : ": NOT", ok ? "" : "  FAILED");
    return ok;
}

bool advantages_case(std::mt19937_64& rng, int scale, int unbiased) {
    std::uniform_real_distribution<float> u(0.f, 1.f);
    const int groups = 300, g = 4, n = groups * g;  // more groups than threads in the block
    std::vector<float> rewards(n);
    for (int i = 0; i < n; ++i) rewards[i] = (float)(int)(u(rng) * 3.f) * 0.5f;  // ties, equal groups
    for (int j = 0; j < g; ++j) rewards[5 * g + j] = 1.f;                        // one surely equal
    rewards[7 * g] = -0.f, rewards[7 * g + 1] = 0.f, rewards[7 * g + 2] = 0.f, rewards[7 * g + 3] = 0.f;
    const float eps = 1e-4f;
    // grpo_advantages.rs group_advantages
    double mean = 0;
    for (float r : rewards) mean += r;
    mean /= n;
    double var = 0;
    for (float r : rewards) var += (r - mean) * (r - mean);
    const double bstd = std::sqrt(var / (unbiased ? n - 1 : n));
    std::vector<float> want(n);
    int zero = 0;
    for (int k = 0; k < groups; ++k) {
        const float* r = &rewards[(size_t)k * g];
        bool eq = true;
        for (int j = 0; j < g; ++j) eq = eq && r[j] == r[0];
        if (eq) {
            ++zero;
            for (int j = 0; j < g; ++j) want[(size_t)k * g + j] = 0.f;
            continue;
        }
        double gm = 0;
        for (int j = 0; j < g; ++j) gm += r[j];
        gm /= g;
        double gv = 0;
        for (int j = 0; j < g; ++j) gv += (r[j] - gm) * (r[j] - gm);
        const double div = scale == SCALE_GROUP ? std::sqrt(gv / (unbiased ? g - 1 : g)) + eps
                           : scale == SCALE_BATCH ? bstd + eps
                                                  : 1.0;
        for (int j = 0; j < g; ++j) want[(size_t)k * g + j] = (float)((r[j] - gm) / div);
    }
    std::vector<float> adv(n, NAN);
    std::vector<double> stats(4, NAN);
    emu::launch(dim3{1, 1, 1}, dim3{256, 1, 1}, [&] {
        grpo_advantages(adv.data(), stats.data(), rewards.data(), n, g, scale, unbiased, eps);
    });
    const bool same = std::memcmp(adv.data(), want.data(), n * 4) == 0;
    const bool ok = same && rel(stats[0], mean) <= kTol && rel(stats[1], bstd) <= kTol &&
                    stats[2] == zero && stats[3] == 0.0;
    // a non-finite reward: its index, nothing else
    rewards[613] = INFINITY;
    rewards[900] = NAN;
    std::vector<double> bad(4, 0.0);
    emu::launch(dim3{1, 1, 1}, dim3{256, 1, 1}, [&] {
        grpo_advantages(adv.data(), bad.data(), rewards.data(), n, g, scale, unbiased, eps);
    });
    const bool bad_ok = bad[3] == 614.0;
    std::printf("  advantages, scale %d, %s std: %s, %d all-equal groups, bad reward reported as %g%s\n",
                scale, unbiased ? "unbiased" : "population", same ? "bit-identical to the reference" : "DIFFER", zero, bad[3] - 1,
                ok && bad_ok ? "" : "  FAILED");
    return ok && bad_ok;
}

}  // namespace

int main(int argc, char** argv) {
    // --quick (ThreadSanitizer): the short rows only
    auto [rng, quick] = emu::start_harness("grpo_loss.cu", argc, argv);
    bool ok = true;
    for (int lt : {GRPO_LOSS_GRPO, GRPO_LOSS_DAPO, GRPO_LOSS_DR_GRPO})
        for (float beta : {0.f, 0.04f})
            for (auto [b, l] : {std::pair{7, 53}, std::pair{5, 601}})
                for (int seq : {0, 1})
                    for (bool two_sided : {false, true})
                        if (!quick || l < 256)
                            ok = loss_case(rng, b, l, lt, beta, seq, two_sided) && ok;
    for (int scale : {SCALE_GROUP, SCALE_BATCH, SCALE_NONE})
        for (int unbiased : {0, 1}) ok = advantages_case(rng, scale, unbiased) && ok;
    std::printf(ok ? "grpo_loss emulation: every figure within its bound\n"
                   : "grpo_loss emulation: FAILED\n");
    return ok ? 0 : 1;
}
