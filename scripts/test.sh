#!/usr/bin/env bash
# The README's test command (and exactly what CI runs): formatting, lints of the CPU build and
# of the GPU backend, every CUDA kernel compiled by nvcc 13.0 from PyPI and assembled by ptxas
# for sm_90a (no GPU needed), the tensor-core attention run in a host emulation of CUDA against
# an f64 reference (and under ThreadSanitizer), the real SmolLM2 model fetched for the real-model tests, then the
# whole test suite. GPU tests print "skipped: no GPU" on a machine without one.
set -euo pipefail
cd "$(dirname "$0")/.."
# each phase's wall time, printed at the end, so a slow CI run says where its time went
phase_names=(); phase_secs=(); phase_start=$SECONDS
phase() {
    if [ ${#phase_names[@]} -gt 0 ]; then phase_secs+=($((SECONDS - phase_start))); fi
    phase_names+=("$1"); phase_start=$SECONDS; echo "== $1"
}
phase "cargo fmt --check" && cargo fmt --check
phase "clippy (CPU build)" && cargo clippy --release --all-targets -- -D warnings
phase "nvcc 13.0 from PyPI" && bash scripts/install_nvcc.sh
phase "clippy (GPU backend)" && cargo clippy --release --features cuda --all-targets -- -D warnings
phase "ptxas sm_90a over every kernel" && bash scripts/check_ptx.sh
phase "every kernel file in the host emulation (vs f64 / the CPU reference)" && bash scripts/emulate_kernels.sh
phase "the emulation again under ThreadSanitizer" && bash scripts/emulate_kernels.sh --tsan
phase "SmolLM2-135M-Instruct (for the real-model tests)" && bash scripts/fetch_smollm2.sh
phase "llama.cpp's tokenizer test vocabularies (tests/gguf_vocab.rs)" && bash scripts/fetch_vocab_tests.sh
phase "tests" && cargo test --release
phase "GPU tests (skip without a GPU)"
# cargo counts a skipped test as passed: say how many really ran on a GPU
gpu_log=target/gpu_tests.log
# --lib: the GPU backend's own unit tests (env-var parsing, shared-memory sizes, the mma kernels'
# opt-in list against the compiled names) need no GPU and run only in this build
cargo test --release --features cuda --lib --test ops_cuda --test attention_cuda --test attention_wgmma_cuda --test decode_attention_cuda --test grpo_cuda --test bf16_cuda \
    --test model_cuda --test decode_cuda --test hf_parity -- --nocapture 2>&1 | tee "$gpu_log"
skipped=$(grep -c "skipped: no GPU" "$gpu_log" || true)
ran=$(grep -c "ran on the GPU and matched the CPU" "$gpu_log" || true)
echo "== GPU tests: $ran ran on a GPU, $skipped skipped (no GPU); cargo's 'passed' includes the skipped"
phase_secs+=($((SECONDS - phase_start)))
echo "== wall time per phase (total ${SECONDS} s)"
for i in "${!phase_names[@]}"; do printf '%6d s  %s\n' "${phase_secs[$i]}" "${phase_names[$i]}"; done
