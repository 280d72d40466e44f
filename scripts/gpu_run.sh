#!/usr/bin/env bash
# Builds everything the GPU machine needs here (release, --features cuda) and stages it in the
# git-ignored device_out/: the cada binary, every test and bench executable, the kernels' PTX,
# and device_out/run_on_gpu.sh, which on the GPU machine runs
#   1. compute-sanitizer memcheck and racecheck over the kernel tests (ops_cuda),
#   2. the GPU test binary (tests/ops_cuda: every kernel against the CPU reference),
#   3. cada bench kernels / cada bench step, 4. bench/peers.py and the ratio table,
# logging each step to $OUT (phases in run_on_gpu.sh below). Prints the device command to use
# (carry: ["device_out"]).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .nvcc/nvidia/cu13/bin/nvcc ]] || ./scripts/install_nvcc.sh >/dev/null
export NVCC="${NVCC:-$(pwd)/.nvcc/nvidia/cu13/bin/nvcc}"

stage=device_out
rm -rf "$stage"
mkdir -p "$stage/tests" "$stage/benches"

cargo build --release --features cuda --bin cada
strip --strip-debug -o "$stage/cada" target/release/cada

# Test and bench executables, located from cargo's JSON messages.
collect() {  # $1 = cargo subcommand args, $2 = destination folder
    # shellcheck disable=SC2086
    cargo $1 --features cuda --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + "\t" + m["executable"])
' | while IFS=$'\t' read -r name exe; do
        # debug info is dropped: the carried folder must stay under 64 MiB
        strip --strip-debug -o "$2/$name" "$exe"
        echo "staged $2/$name"
    done
}
# Only the GPU tests travel: the others run here in CI, and several find the cada binary and the
# models by their build-time paths, which do not exist on the GPU machine.
collect "test --release --test ops_cuda" "$stage/tests"
collect "bench --benches" "$stage/benches"

out_dir=$(ls -td target/release/build/cada-*/out | while read -r d; do
    [[ -f "$d/cuda_kernels.rs" ]] && { echo "$d"; break; }; done)
mkdir -p "$stage/ptx" && cp "$out_dir"/*.ptx "$stage/ptx/"

# Liger-Kernel (a peer in TARGETS.md) is not in the GPU machine's image and nothing can be
# fetched there: carry it, unpacked (pure Python over Triton, which the image has).
if python3 -m pip download --quiet --disable-pip-version-check --no-deps liger-kernel==0.8.5 \
        -d "$stage/wheels" 2>/dev/null; then
    python3 -m zipfile -e "$stage"/wheels/liger_kernel-0.8.5-py3-none-any.whl "$stage/py"
    rm -rf "$stage/wheels"
    echo "staged liger-kernel 0.8.5 in $stage/py"
else
    echo "warning: could not download liger-kernel; its peer rows will be skipped" >&2
fi

cat > "$stage/run_on_gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root; every log and report lands in $OUT.
#   bash device_out/run_on_gpu.sh [check] [bench] [peers] [criterion]   (default: check bench peers)
# check:     nvidia-smi; compute-sanitizer memcheck + racecheck over the kernel tests; every test
# bench:     cada bench kernels (full set, both attention variants) and cada bench step
# peers:     bench/peers.py (PyTorch SDPA, naive log-prob, Liger if present, GRPO loss eager and
#            compiled, HF generate + train step) and the our/peer ratio table
# criterion: the CPU criterion benches (CPU numbers; slow, rarely useful on the GPU machine)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OUT="${OUT:-$here/logs}"
mkdir -p "$OUT"
phases=("$@")
(( ${#phases[@]} )) || phases=(check bench peers)
status=0
cada="$here/cada"
step() {  # $1 = log name, rest = command; a failure is recorded, the run goes on
    local name=$1; shift
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1 || { echo "   FAILED (see $OUT/$name.log)"; status=1; }
    tail -3 "$OUT/$name.log"
}
for phase in "${phases[@]}"; do case $phase in
check)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
    if [[ -n "$sanitizer" && -x "$here/tests/ops_cuda" ]]; then
        for tool in memcheck racecheck; do
            step "sanitizer_$tool" "$sanitizer" --tool "$tool" --error-exitcode 9 "$here/tests/ops_cuda" --test-threads=1
        done
    else
        echo "compute-sanitizer not found: memcheck/racecheck NOT run" | tee "$OUT/sanitizer_missing.txt"
        status=1
    fi
    for t in "$here"/tests/*; do
        step "test_$(basename "$t")" "$t" --nocapture --test-threads=1
        grep -E "^test result|skipped|rel err" "$OUT/test_$(basename "$t").log" | tail -5
    done
    ;;
bench)
    step bench_kernels "$cada" bench kernels --device cuda --json "$OUT/ours_kernels.json"
    # rollout shape of TARGETS.md (64 sequences, prompt 128, 256 new tokens) and the
    # train-step shape (4 × 4096); random weights
    for shape in smollm2-135m qwen2.5-0.5b; do
        step "bench_step_rollout_$shape" "$cada" bench step --device cuda --shape "$shape" \
            --prompts 8 --group 8 --prompt-len 128 --new-tokens 256 --micro-batch-rows 16 \
            --records "$OUT/ours_rollout_$shape.json" --json "$OUT/step_rollout_$shape.json"
        step "bench_step_train_$shape" "$cada" bench step --device cuda --shape "$shape" \
            --prompts 1 --group 4 --prompt-len 3840 --new-tokens 256 --micro-batch-rows 4 \
            --records "$OUT/ours_train_$shape.json" --json "$OUT/step_train_$shape.json"
    done
    ;;
peers)
    "$cada" bench shapes --set full > "$OUT/shapes.json"
    step peers env PYTHONPATH="$here/py:${PYTHONPATH:-}" python3 "$root/bench/peers.py" --shapes "$OUT/shapes.json" --out "$OUT/peers.json" --hf
    ours=("$OUT"/ours_*.json)
    if [[ -f "$OUT/peers.json" && -f "${ours[0]}" ]]; then
        "$cada" bench report --ours "${ours[@]}" --peers "$OUT/peers.json" > "$OUT/ratios.md" 2>&1 || status=1
        cat "$OUT/ratios.md"
    fi
    ;;
criterion)
    for b in "$here"/benches/*; do
        step "bench_$(basename "$b")" "$b" --bench
    done
    ;;
*) echo "unknown phase $phase (check, bench, peers, criterion)"; status=1 ;;
esac; done
exit $status
RUN
chmod +x "$stage/run_on_gpu.sh"
size_mib=$(du -sm "$stage" | cut -f1)
echo "device_out: ${size_mib} MiB"
if (( size_mib > 60 )); then
    echo "warning: device_out exceeds the 64 MiB carry limit; remove test binaries not needed on the GPU" >&2
fi
echo
echo "device command (carry: [\"device_out\"], timeout_s 600):"
echo "  bash device_out/run_on_gpu.sh"
echo "(all phases; to stay under one call's 600 s limit on a slow first run, split it:"
echo "  bash device_out/run_on_gpu.sh check   then   bash device_out/run_on_gpu.sh bench peers)"
