#!/usr/bin/env bash
# Runs the tensor-core attention (kernels/attention_mma.cu, unchanged) in the host emulation of
# kernels/emulation/ against an f64 reference: the index math of its fragments, masks and
# pipelines, checked without a GPU. `--tsan` builds with ThreadSanitizer (every CUDA thread is a
# std::thread, so a missing __syncthreads shows up as a data race) on the quick shapes.
# Needs a C++20 compiler (g++ ≥ 11 or clang++ ≥ 13); says so and exits 0 when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX:-}
if [[ -z "$cxx" ]]; then
    for c in g++ clang++ c++; do
        if command -v "$c" >/dev/null; then cxx=$c; break; fi
    done
fi
if [[ -z "$cxx" ]]; then
    echo "emulate_kernels: skipped: no C++ compiler (set CXX)"
    exit 0
fi
out=target/emulation
mkdir -p "$out"
src=kernels/emulation/attention_mma_check.cpp
if [[ "${1:-}" == "--tsan" ]]; then
    "$cxx" -std=c++20 -O1 -g -fsanitize=thread -pthread -Ikernels/emulation -o "$out/attention_mma_tsan" "$src"
    # halt_on_error: a race fails the run instead of scrolling past
    TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}" "$out/attention_mma_tsan" --quick
else
    "$cxx" -std=c++20 -O2 -pthread -Ikernels/emulation -o "$out/attention_mma" "$src"
    "$out/attention_mma"
fi
