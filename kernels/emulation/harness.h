// What every harness of this folder starts with: the random generator, seeded from
// CADA_EMU_SEED when set (to repeat a run) or else from the clock, with the seed printed, that
// also draws the block order of every launch; and the `--quick` flag that
// scripts/emulate_kernels.sh passes under ThreadSanitizer.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "cuda_runtime.h"

namespace emu {

struct Harness {
    std::mt19937_64 rng;
    bool quick;
};

// `what` names the kernel file in the first line printed.
inline Harness start_harness(const char* what, int argc, char** argv) {
    const char* env = std::getenv("CADA_EMU_SEED");
    const uint64_t seed =
        env ? std::strtoull(env, nullptr, 10)
            : (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count();
    std::printf("%s in the host emulation (seed %llu)\n", what, (unsigned long long)seed);
    // the block order draws from its own stream of the same seed, so one seed repeats a run
    block_order.seed(seed ^ 0x9e3779b97f4a7c15ull);
    return Harness{std::mt19937_64(seed), argc > 1 && std::string(argv[1]) == "--quick"};
}

}  // namespace emu
