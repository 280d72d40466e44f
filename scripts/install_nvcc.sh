#!/usr/bin/env bash
# Installs a repo-local CUDA 13.0 compiler (nvcc + ptxas + NVVM + headers) from PyPI into .nvcc/
# (git-ignored), so build.rs can compile kernels/*.cu without a system CUDA toolkit.
# Idempotent: does nothing when the pinned nvcc is already there. Prints the nvcc path.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.nvcc
nvcc="$dest/nvidia/cu13/bin/nvcc"
if [[ ! -x "$nvcc" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
# The wheels do not keep the execute bit on every tool; nvcc calls ptxas, cicc, fatbinary.
chmod +x "$dest"/nvidia/cu13/bin/* "$dest"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
[[ -x "$nvcc" ]] || { echo "install_nvcc.sh: $nvcc missing after install" >&2; exit 1; }
echo "$(pwd)/$nvcc"
