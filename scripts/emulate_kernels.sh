#!/usr/bin/env bash
# Runs kernels in the host emulation of kernels/emulation/, each .cu file unchanged: the
# training attentions (attention_mma.cu: the index math of its fragments, masks and pipelines;
# attention_wgmma.cu: its matrix descriptors and warpgroup MMAs; attention.cu, the default) and the KV-cache decode (decode_attention.cu, decode_attention_split.cu) against f64
# references, the sampler (sampling.cu) against the CPU reference's token choice, and the GRPO
# loss and advantages (grpo_loss.cu) against a transcription of the CPU reference, and the rest
# of the layer (rmsnorm, rope, embedding, swiglu, adamw, convert, elementwise, fused_logprob)
# against f64 evaluations of the CPU's formulas, and Qwen3's fused q/k norm + RoPE
# (qk_norm_rope.cu) bit for bit against the kernels it fuses, checked without a GPU. `--tsan` builds with
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
names=(attention_mma attention_wgmma attention_simt decode_attention decode_attention_split sampling grpo layer_ops qk_norm_rope)
if [[ "${1:-}" == "--tsan" ]]; then
    suffix=_tsan flags=(-O1 -g -fsanitize=thread) run_args=(--quick)
    # halt_on_error: a race fails the run instead of scrolling past
    export TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}"
else
    suffix="" flags=(-O2) run_args=()
fi
# each harness compiles one kernel file unchanged against the emulation; the compiles (one core
# each) run side by side, as many at a time as there are cores, then the harnesses run one by
# one (each runs every CUDA thread of a block as a thread of its own)
parallel=$(nproc 2>/dev/null || echo 2)
pids=() failed=()
reap() {  # waits for compile $1 and records a failure
    wait "${pids[$1]}" || failed+=("${names[$1]}")
}
for i in "${!names[@]}"; do
    if (( i >= parallel )); then reap $((i - parallel)); fi
    name=${names[$i]}
    "$cxx" -std=c++20 "${flags[@]}" -pthread -Ikernels/emulation -o "$out/$name$suffix" \
        "kernels/emulation/${name}_check.cpp" &
    pids+=("$!")
done
for (( i = ${#names[@]} - parallel; i < ${#names[@]}; i++ )); do
    if (( i >= 0 )); then reap "$i"; fi
done
if (( ${#failed[@]} )); then
    echo "emulate_kernels: the harness of ${failed[*]} did not compile" >&2
    exit 1
fi
# each exits 1 on a failure
for name in "${names[@]}"; do
    "$out/$name$suffix" "${run_args[@]}"
done
