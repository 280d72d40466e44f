#!/usr/bin/env bash
# Builds everything the GPU machine needs here (release, --features cuda) and stages it in the
# git-ignored device_out/: the cada binary, every test and bench executable, the kernels' PTX,
# and device_out/run_on_gpu.sh, which on the GPU machine runs
#   1. compute-sanitizer memcheck and racecheck over the kernel tests (ops_cuda),
#   2. every test binary (the CUDA ones run for real there, the rest as on this machine),
#   3. the benches,
# logging each step to $OUT. Prints the single device command to use (carry: ["device_out"]).
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
    cargo $1 --release --features cuda --no-run --message-format=json 2>/dev/null |
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
collect "test" "$stage/tests"
collect "bench --benches" "$stage/benches"

out_dir=$(ls -td target/release/build/cada-*/out | while read -r d; do
    [[ -f "$d/cuda_kernels.rs" ]] && { echo "$d"; break; }; done)
mkdir -p "$stage/ptx" && cp "$out_dir"/*.ptx "$stage/ptx/"

cat > "$stage/run_on_gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root; every log lands in $OUT.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT="${OUT:-$here/logs}"
mkdir -p "$OUT"
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
if [[ -n "$sanitizer" && -x "$here/tests/ops_cuda" ]]; then
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer $tool: ops_cuda"
        "$sanitizer" --tool "$tool" --error-exitcode 9 "$here/tests/ops_cuda" --test-threads=1 \
            > "$OUT/sanitizer_$tool.log" 2>&1 || { echo "   FAILED (see $OUT/sanitizer_$tool.log)"; status=1; }
    done
else
    echo "compute-sanitizer not found: memcheck/racecheck NOT run" | tee "$OUT/sanitizer_missing.txt"
fi
for t in "$here"/tests/*; do
    name=$(basename "$t")
    echo "== test $name"
    "$t" --nocapture --test-threads=1 > "$OUT/test_$name.log" 2>&1 || { echo "   FAILED (see $OUT/test_$name.log)"; status=1; }
    grep -E "^test result|skipped|rel err" "$OUT/test_$name.log" | tail -5
done
for b in "$here"/benches/*; do
    name=$(basename "$b")
    echo "== bench $name"
    "$b" --bench > "$OUT/bench_$name.log" 2>&1 || { echo "   FAILED (see $OUT/bench_$name.log)"; status=1; }
done
exit $status
RUN
chmod +x "$stage/run_on_gpu.sh"
size_mib=$(du -sm "$stage" | cut -f1)
echo "device_out: ${size_mib} MiB"
if (( size_mib > 60 )); then
    echo "warning: device_out exceeds the 64 MiB carry limit; remove test binaries not needed on the GPU" >&2
fi
echo
echo "device command (carry: [\"device_out\"]):"
echo "  bash device_out/run_on_gpu.sh"
