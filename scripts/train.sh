#!/usr/bin/env bash
# The README's main job: CADA training on the default model in models/, on the GPU when one is
# present (a CUDA driver that lists a device), else on the CPU reference backend. With a GPU it
# builds the `cuda` feature, installing nvcc 13.0 from PyPI into .nvcc/ first when no nvcc is
# found; `cada train --device auto` (the default) then picks the GPU. Extra arguments go to
# `cada train` (e.g. --config run.toml, --steps 100, --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    if [[ -z "${NVCC:-}" ]] && ! command -v nvcc >/dev/null 2>&1 \
        && [[ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ]]; then
        export NVCC
        NVCC=$(bash scripts/install_nvcc.sh)
    fi
    features=(--features cuda)
    echo "train.sh: GPU found ($(nvidia-smi -L | head -1)); building the CUDA backend" >&2
else
    echo "train.sh: no GPU found; training on the CPU reference backend" >&2
fi
exec cargo run --release "${features[@]}" -- train "$@"
