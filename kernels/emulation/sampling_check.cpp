// Runs kernels/sampling.cu, unchanged, in the host emulation (cuda_runtime.h) and compares the
// sampled token of every row with a transcription of the CPU reference
// (src/backend/cpu/sampling.rs: sort by (p desc, index asc), top-k, top-p, inverse CDF with the
// caller's uniform). The kernel must pick the same token for the same draw; it avoids the sort
// by a radix select over the f32 bits of t = −z and a block scan over tied tokens, which is what this
// checks: rows with many exact ties, vocabularies that are not a multiple of the block, draws
// at 0 and just below 1, greedy rows. Fresh random rows each run (CADA_EMU_SEED to repeat).
// Blocks of 128 threads for most rows (the kernel is written for any multiple of 32), one
// config at the launcher's SAMPLE_THREADS (256). Exit status 1 on any mismatch.
#define CADA_HOST_EMULATION
#include "cuda_runtime.h"
#include "harness.h"

#include "../sampling.cu"

#include <cstdio>
#include <random>

namespace {

// src/backend/cpu/sampling.rs `sample_row`, line for line.
unsigned sample_row_ref(const float* logits, int vocab, float u, float temperature, float top_p,
                        int top_k) {
    if (temperature <= 0.f) {
        int best = 0;
        for (int i = 0; i < vocab; ++i)
            if (logits[i] > logits[best]) best = i;
        return (unsigned)best;
    }
    float m = -INFINITY;
    for (int i = 0; i < vocab; ++i) m = std::max(m, logits[i]);
    std::vector<std::pair<int, double>> probs(vocab);
    for (int i = 0; i < vocab; ++i) probs[i] = {i, std::exp((double)((logits[i] - m) / temperature))};
    std::sort(probs.begin(), probs.end(), [](const auto& a, const auto& b) {
        return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    if (top_k > 0 && top_k < vocab) probs.resize(top_k);
    double total = 0;
    for (const auto& p : probs) total += p.second;
    if (top_p < 1.f) {
        const double target = (double)top_p * total;
        double cum = 0;
        size_t keep = probs.size();
        for (size_t i = 0; i < probs.size(); ++i) {
            cum += probs[i].second;
            if (cum >= target) {
                keep = i + 1;
                break;
            }
        }
        probs.resize(keep);
    }
    total = 0;
    for (const auto& p : probs) total += p.second;
    const double target = (double)u * total;
    double cum = 0;
    for (const auto& p : probs) {
        cum += p.second;
        if (target < cum) return (unsigned)p.first;
    }
    return probs.empty() ? 0u : (unsigned)probs.back().first;
}

struct Config {
    float temperature, top_p;
    int top_k;
};

}  // namespace

int main(int argc, char** argv) {
    // --quick (ThreadSanitizer): three configs at 128 threads
    auto [rng, quick] = emu::start_harness("sampling.cu", argc, argv);
    std::uniform_real_distribution<float> uni(0.f, 1.f), wide(-4.f, 4.f);

    // rows: smooth logits, heavily tied logits (quarter steps), one dominant token
    const int vocab = 1001, rows_per_kind = 4, kinds = 3, batch = rows_per_kind * kinds;
    std::vector<float> logits((size_t)batch * vocab);
    for (int r = 0; r < batch; ++r)
        for (int i = 0; i < vocab; ++i) {
            float x = wide(rng);
            if (r / rows_per_kind == 1) x = std::round(x * 4.f) / 4.f;
            if (r / rows_per_kind == 2) x = i == (r * 37) % vocab ? 12.f : x * 0.25f;
            logits[(size_t)r * vocab + i] = x;
        }
    std::vector<float> uniforms(batch);
    for (int r = 0; r < batch; ++r) uniforms[r] = uni(rng);
    uniforms[0] = 0.f;
    uniforms[1] = 0.99999994f;  // the largest f32 below 1
    uniforms[rows_per_kind] = 0.99999994f;

    const Config configs[] = {{0.f, 1.f, 0},   {1.f, 1.f, 0},    {0.7f, 0.9f, 0},
                              {1.f, 1.f, 50},  {1.3f, 0.5f, 20}, {1.f, 0.95f, 1},
                              {1.f, 1.f, 1001}, {2.f, 0.3f, 0}};
    bool ok = true;
    int compared = 0;
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ++ci) {
        if (quick && ci != 1 && ci != 4 && ci != 5) continue;
        const Config c = configs[ci];
        const unsigned threads = ci == 2 ? SAMPLE_THREADS : 128;  // one config at the real size
        std::vector<unsigned> tokens(batch, 0xffffffffu);
        std::vector<float> t_scratch((size_t)batch * vocab, NAN);
        std::vector<double> p_scratch((size_t)batch * vocab, NAN);
        emu::launch(dim3{(unsigned)batch, 1, 1}, dim3{threads, 1, 1}, [&] {
            sample_rows(tokens.data(), t_scratch.data(), p_scratch.data(), logits.data(),
                        uniforms.data(), vocab, c.temperature, c.top_p, c.top_k);
        });
        int bad = 0;
        for (int r = 0; r < batch; ++r) {
            const unsigned want = sample_row_ref(&logits[(size_t)r * vocab], vocab, uniforms[r],
                                                 c.temperature, c.top_p, c.top_k);
            ++compared;
            if (tokens[r] != want) {
                ++bad;
                std::printf("    row %d (u %.8f): kernel %u, reference %u  MISMATCH\n", r,
                            uniforms[r], tokens[r], want);
            }
        }
        std::printf("  T %.1f, top_p %.2f, top_k %d, %u threads: %d/%d rows agree\n",
                    c.temperature, c.top_p, c.top_k, threads, batch - bad, batch);
        ok = ok && bad == 0;
    }
    // a SmolLM2-sized vocabulary at the launcher's block: 49,152 logits a row, spread like a
    // language model's (a few likely tokens, a long tail), so the radix passes see many digits
    if (!quick) {
        const int big = 49152, rows = 6;
        std::normal_distribution<float> tail(0.f, 3.f);
        std::vector<float> lg((size_t)rows * big);
        for (int r = 0; r < rows; ++r)
            for (int i = 0; i < big; ++i) lg[(size_t)r * big + i] = tail(rng) + (i % 997 == r ? 9.f : 0.f);
        std::vector<float> u(rows);
        for (auto& x : u) x = uni(rng);
        for (const Config c : {Config{1.f, 1.f, 0}, Config{0.8f, 0.9f, 40}}) {
            std::vector<unsigned> tokens(rows, 0xffffffffu);
            std::vector<float> ts((size_t)rows * big, NAN);
            std::vector<double> ps((size_t)rows * big, NAN);
            emu::launch(dim3{(unsigned)rows, 1, 1}, dim3{SAMPLE_THREADS, 1, 1}, [&] {
                sample_rows(tokens.data(), ts.data(), ps.data(), lg.data(), u.data(), big,
                            c.temperature, c.top_p, c.top_k);
            });
            int bad = 0;
            for (int r = 0; r < rows; ++r) {
                ++compared;
                const unsigned want = sample_row_ref(&lg[(size_t)r * big], big, u[r], c.temperature,
                                                     c.top_p, c.top_k);
                if (tokens[r] != want) {
                    ++bad;
                    std::printf("    row %d: kernel %u, reference %u  MISMATCH\n", r, tokens[r], want);
                }
            }
            std::printf("  vocab %d, T %.1f, top_p %.2f, top_k %d, %u threads: %d/%d rows agree\n",
                        big, c.temperature, c.top_p, c.top_k, SAMPLE_THREADS, rows - bad, rows);
            ok = ok && bad == 0;
        }
    }
    std::printf(ok ? "sampling emulation: all %d rows picked the reference's token\n"
                   : "sampling emulation: FAILED (%d rows compared)\n",
                compared);
    return ok ? 0 : 1;
}
