#!/usr/bin/env bash
# The README's main job: CADA training on the default model, on the GPU when one is present
# (building the CUDA backend, installing nvcc from PyPI if needed), else on the CPU.
# Extra arguments go to `cada train` (e.g. --config run.toml, --steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e /dev/nvidia0 ] || command -v nvidia-smi >/dev/null 2>&1; then
    command -v nvcc >/dev/null 2>&1 || [ -n "${NVCC:-}" ] || bash scripts/install_nvcc.sh
    exec cargo run --release --features cuda -- train "$@"
fi
exec cargo run --release -- train "$@"
