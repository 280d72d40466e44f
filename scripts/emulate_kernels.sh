#!/usr/bin/env bash
# Runs kernels in the host emulation of kernels/emulation/, each .cu file unchanged: the
# training attentions (attention_mma.cu: the index math of its fragments, masks and pipelines;
# attention_wgmma.cu: its matrix descriptors and warpgroup MMAs; attention.cu, the default) and the KV-cache decode (decode_attention.cu, decode_attention_split.cu) against f64
# references, the sampler (sampling.cu) against the CPU reference's token choice, and the GRPO
# loss and advantages (grpo_loss.cu) against a transcription of the CPU reference, and the rest
# of the layer (rmsnorm, rope, embedding, swiglu, adamw, convert, elementwise, fused_logprob)
# against f64 evaluations of the CPU's formulas, checked without a GPU. `--tsan` builds with
# ThreadSanitizer (every CUDA thread is a std::thread, so a missing __syncthreads shows up as a
# data race) on the quick cases.
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
# each harness compiles one kernel file unchanged against the emulation and exits 1 on a failure
for name in attention_mma attention_wgmma attention_simt decode_attention decode_attention_split sampling grpo layer_ops; do
    src=kernels/emulation/${name}_check.cpp
    if [[ "${1:-}" == "--tsan" ]]; then
        "$cxx" -std=c++20 -O1 -g -fsanitize=thread -pthread -Ikernels/emulation -o "$out/${name}_tsan" "$src"
        # halt_on_error: a race fails the run instead of scrolling past
        TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}" "$out/${name}_tsan" --quick
    else
        "$cxx" -std=c++20 -O2 -pthread -Ikernels/emulation -o "$out/$name" "$src"
        "$out/$name"
    fi
done
