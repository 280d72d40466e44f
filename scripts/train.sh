#!/usr/bin/env bash
# The README's main job: CADA training on the default model in models/. Runs on the CPU reference
# backend (the CUDA backend is not in the tree yet; when it lands this script builds it when a
# GPU is present). Extra arguments go to `cada train` (e.g. --config run.toml, --steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -- train "$@"
