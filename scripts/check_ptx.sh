#!/usr/bin/env bash
# CI kernel gate: builds with the `cuda` feature (build.rs runs nvcc) and assembles every
# generated PTX for sm_90a with ptxas, so a kernel that only the JIT would reject fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="${NVCC:-}"
[[ -z "$nvcc" && -x .nvcc/nvidia/cu13/bin/nvcc ]] && nvcc="$(pwd)/.nvcc/nvidia/cu13/bin/nvcc"
[[ -z "$nvcc" ]] && nvcc="$(command -v nvcc || true)"
[[ -n "$nvcc" ]] || { echo "check_ptx.sh: no nvcc (run scripts/install_nvcc.sh)" >&2; exit 1; }
ptxas="$(dirname "$nvcc")/ptxas"
NVCC="$nvcc" cargo build --release --features cuda --lib
# the newest build-script output folder holding the kernels
out=$(ls -td target/release/build/cada-*/out 2>/dev/null | while read -r d; do
    [[ -f "$d/cuda_kernels.rs" ]] && { echo "$d"; break; }; done)
[[ -n "$out" ]] || { echo "check_ptx.sh: no compiled kernels under target/release/build" >&2; exit 1; }
count=0
for ptx in "$out"/*.ptx; do
    "$ptxas" -arch=sm_90a "$ptx" -o /dev/null
    echo "ptxas sm_90a ok: $(basename "$ptx")"
    count=$((count + 1))
done
expected=$(ls kernels/*.cu | wc -l)
[[ "$count" -eq "$expected" ]] || { echo "check_ptx.sh: $count PTX files for $expected kernels/*.cu" >&2; exit 1; }
echo "check_ptx.sh: all $count kernel files assemble for sm_90a"
