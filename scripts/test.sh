#!/usr/bin/env bash
# The README's test command (and exactly what CI runs): formatting, lints of the CPU build and
# of the GPU backend, every CUDA kernel compiled by nvcc 13.0 from PyPI and assembled by ptxas
# for sm_90a (no GPU needed), the tensor-core attention run in a host emulation of CUDA against
# an f64 reference (and under ThreadSanitizer), the real SmolLM2 model fetched for the real-model tests, then the
# whole test suite. GPU tests print "skipped: no GPU" on a machine without one.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check" && cargo fmt --check
echo "== clippy (CPU build)" && cargo clippy --release --all-targets -- -D warnings
echo "== nvcc 13.0 from PyPI" && bash scripts/install_nvcc.sh
echo "== clippy (GPU backend)" && cargo clippy --release --features cuda --all-targets -- -D warnings
echo "== ptxas sm_90a over every kernel" && bash scripts/check_ptx.sh
echo "== every kernel file in the host emulation (vs f64 / the CPU reference; ThreadSanitizer)"
# two commands, not `a && b`: under `set -e` a failure on the left of `&&` does not stop the script
bash scripts/emulate_kernels.sh
bash scripts/emulate_kernels.sh --tsan
echo "== SmolLM2-135M-Instruct (for the real-model tests)" && bash scripts/fetch_smollm2.sh
echo "== llama.cpp's tokenizer test vocabularies (tests/gguf_vocab.rs)" && bash scripts/fetch_vocab_tests.sh
echo "== tests" && cargo test --release
echo "== GPU tests (skip without a GPU)"
# cargo counts a skipped test as passed: say how many really ran on a GPU
gpu_log=target/gpu_tests.log
# --lib: the GPU backend's own unit tests (env-var parsing, shared-memory sizes, the mma kernels'
# opt-in list against the compiled names) need no GPU and run only in this build
cargo test --release --features cuda --lib --test ops_cuda --test attention_cuda --test attention_wgmma_cuda --test decode_attention_cuda --test grpo_cuda --test bf16_cuda \
    --test model_cuda --test decode_cuda --test hf_parity -- --nocapture 2>&1 | tee "$gpu_log"
skipped=$(grep -c "skipped: no GPU" "$gpu_log" || true)
ran=$(grep -c "ran on the GPU and matched the CPU" "$gpu_log" || true)
echo "== GPU tests: $ran ran on a GPU, $skipped skipped (no GPU); cargo's 'passed' includes the skipped"
