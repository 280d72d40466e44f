#!/usr/bin/env bash
# The README's test command (and exactly what CI runs): formatting, lints, then the whole test
# suite on the CPU reference backend.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check" && cargo fmt --check
echo "== clippy" && cargo clippy --release --all-targets -- -D warnings
echo "== tests" && cargo test --release
