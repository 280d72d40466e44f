#!/usr/bin/env bash
# Builds everything the GPU machine needs here (release, --features cuda) and stages it in the
# git-ignored device_out/: bundle.tar.xz (the cada binary, the GPU test executables, the
# kernels' PTX, Liger-Kernel) and run_on_gpu.sh, which on the GPU machine unpacks it and runs
#   1. the GPU test binaries (tests/ops_cuda: every kernel against the CPU reference;
#      tests/attention_cuda: the f32 and mma attentions; tests/attention_wgmma_cuda: the wgmma
#      attention (sm_90 only), per op and in the whole model; tests/decode_attention_cuda: the decode
#      attention and the KV-cache writes; tests/grpo_cuda: the loss, its fused pass and
#      the advantages; tests/model_cuda: the whole model's log-probs and every gradient;
#      tests/decode_cuda: the KV-cache decode, graphs, stacking, bf16 cache; tests/hf_parity: the GPU against transformers' float64 dump), then
#      compute-sanitizer memcheck and racecheck over the kernel tests,
#   2. the main job on the GPU (cada train on models/default, --device cuda),
#   3. cada bench kernels / cada bench step, 4. bench/peers.py (the ratio table is made here),
# logging each step to $OUT (phases in run_on_gpu.sh below). Prints the device command to use
# (carry: ["device_out"]).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .nvcc/nvidia/cu13/bin/nvcc ]] || ./scripts/install_nvcc.sh >/dev/null
export NVCC="${NVCC:-$(pwd)/.nvcc/nvidia/cu13/bin/nvcc}"

# Everything that travels (the tracked tree and device_out) must stay under the device tool's
# 64 MiB: unpacked, the binaries alone came to 63 MiB (each test executable carries the whole
# library with its embedded kernels), so they travel as one xz archive (~7 MiB).
stage=device_out/bundle
rm -rf device_out
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
collect "test --release --test ops_cuda --test attention_cuda --test attention_wgmma_cuda --test decode_attention_cuda --test grpo_cuda --test bf16_cuda --test model_cuda --test decode_cuda --test hf_parity" "$stage/tests"
# The criterion benches time the CPU backend: useful there only on request (CADA_STAGE_CRITERION=1),
# and at ~6 MB each they would crowd the 64 MiB carry.
if [[ "${CADA_STAGE_CRITERION:-0}" == 1 ]]; then
    collect "bench --benches" "$stage/benches"
fi

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

XZ_OPT="-6 -T0" tar cJf device_out/bundle.tar.xz -C "$stage" .
rm -rf "$stage"
stage=device_out

cat > "$stage/run_on_gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root:
#   bash device_out/run_on_gpu.sh [tests] [train] [sanitize] [train_tc] [bench] [peers] [peers_hf] [criterion]
# tests:     nvidia-smi; the GPU tests (every kernel, the GRPO ops, the whole model vs the CPU)
# train:     the main job (cada train on models/default) on the GPU
# train_tc:  the same with CADA_GEMM=bf16 CADA_ATTENTION=mma (the tensor-core paths)
# sanitize:  compute-sanitizer memcheck + racecheck over the kernel tests (check = tests sanitize)
# bench:     cada bench kernels (full set, both attention kernels) and cada bench step
# peers:     bench/peers.py kernel peers (SDPA, naive log-prob, Liger, GRPO loss eager/compiled)
# peers_hf:  bench/peers.py HF generate (dynamic + static cache) and HF train step
# criterion: the CPU criterion benches (staged only with CADA_STAGE_CRITERION=1)
# Default: tests train sanitize. Every step has a time limit and the work folder is packed into
# $OUT/results-<phases>.tgz after each step (the device tool returns at most 8 files from $OUT),
# so a killed command still returns everything finished before. $OUT/summary.txt has the tails.
# CADA_GPU_BUDGET_S (default 480) caps the whole call: each step's limit shrinks to what is left
# and steps that no longer fit are recorded as skipped, so the call ends, packed, before the
# device tool's timeout (set timeout_s ≈ budget + 60).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
OUT="${OUT:-$here/out}"
mkdir -p "$OUT"
# the binaries travel packed (the 64 MiB carry limit); python's tarfile if the image lacks xz
bin=/tmp/cada_bundle
rm -rf "$bin" && mkdir -p "$bin"
tar xJf "$here/bundle.tar.xz" -C "$bin" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$here/bundle.tar.xz" "$bin" ||
    { echo "could not unpack $here/bundle.tar.xz" | tee -a "$OUT/summary.txt"; exit 1; }
phases=()
for p in "$@"; do [[ $p == check ]] && phases+=(tests sanitize) || phases+=("$p"); done
(( ${#phases[@]} )) || phases=(tests train sanitize)
tag=$(IFS=-; echo "${phases[*]}")
work=/tmp/cada_gpu_$tag
rm -rf "$work" && mkdir -p "$work"
chmod +x "$bin/cada" "$bin"/tests/* "$bin"/benches/* 2>/dev/null
status=0
cada="$bin/cada"

# cudarc dlopens libcublas / libnvToolsExt by name: where the image keeps them only inside pip
# packages, put those folders on the loader path.
for lib in libcublas.so.13 libnvToolsExt.so.1; do
    if ! ldconfig -p 2>/dev/null | grep -q "$lib"; then
        found=$(find /usr/local /opt /usr/lib "$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])' 2>/dev/null)" \
                -name "$lib*" 2>/dev/null | head -1)
        [[ -n "$found" ]] && export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "$lib: ${found:-not found}" | tee -a "$work/libraries.txt"
    fi
done

budget=${CADA_GPU_BUDGET_S:-480}
pack() { tar czf "$OUT/results-$tag.tgz" -C "$work" . 2>/dev/null; }
step() {  # $1 = log name, $2 = seconds allowed, rest = command; a failure is recorded, the run goes on
    local name=$1 limit=$2; shift 2
    local left=$((budget - SECONDS - 25))  # timeout's 10 s kill grace + 15 s for the last pack
    if (( left < 20 )); then
        echo "== $name SKIPPED: the call's budget (${budget}s) is spent" | tee -a "$OUT/summary.txt"
        status=1
        return
    fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$work/$name.log" 2>&1
    local rc=$?
    if (( rc == 124 || rc == 137 )); then
        echo "   TIMED OUT after ${limit}s (see $name.log)" | tee -a "$OUT/summary.txt"; status=1
    elif (( rc != 0 )); then
        echo "   FAILED rc=$rc (see $name.log)" | tee -a "$OUT/summary.txt"; status=1
    fi
    echo "   $((SECONDS - t0)) s" >> "$OUT/summary.txt"
    tail -4 "$work/$name.log" | tee -a "$OUT/summary.txt"
    pack
}
for phase in "${phases[@]}"; do case $phase in
tests)
    nvidia-smi > "$work/nvidia-smi.txt" 2>&1 && has_gpu=1 || has_gpu=0
    for t in ops_cuda attention_cuda attention_wgmma_cuda decode_attention_cuda grpo_cuda bf16_cuda model_cuda decode_cuda hf_parity; do
        step "test_$t" 90 "$bin/tests/$t" --nocapture --test-threads=1
        [[ -f "$work/test_$t.log" ]] &&
            grep -E "^test |rel err|skipped" "$work/test_$t.log" | tail -60 >> "$OUT/summary.txt"
    done
    # a test that skips passes for cargo: on a machine whose nvidia-smi sees a GPU that is a failure
    ran=$(cat "$work"/test_*.log 2>/dev/null | grep -c "ran on the GPU and matched the CPU")
    skipped=$(cat "$work"/test_*.log 2>/dev/null | grep -c "skipped: no GPU")
    echo "== GPU tests: $ran ran on the GPU, $skipped skipped (nvidia-smi: $( ((has_gpu)) && echo GPU || echo none))" |
        tee -a "$OUT/summary.txt"
    # the wgmma tests skip, by design and saying so, on a GPU that is not compute capability 9.0
    not_sm90=$(cat "$work"/test_*.log 2>/dev/null | grep -c "skipped: this GPU is not compute capability 9.0")
    if (( not_sm90 > 0 )); then
        echo "   $not_sm90 wgmma tests skipped: this GPU is not compute capability 9.0" | tee -a "$OUT/summary.txt"
    fi
    if (( has_gpu && skipped > 0 )); then
        echo "   FAILED: $skipped tests skipped on a machine with a GPU" | tee -a "$OUT/summary.txt"
        status=1
    fi
    ;;
sanitize)
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [[ -n "$sanitizer" ]]; then
        # memcheck over every kernel test; racecheck (slow) where kernels share memory: the
        # attentions (training and decode), the GRPO reductions and the block-reduction kernels of ops_cuda
        for t in ops_cuda attention_cuda attention_wgmma_cuda decode_attention_cuda grpo_cuda bf16_cuda; do
            step "sanitizer_memcheck_$t" 60 "$sanitizer" --tool memcheck --error-exitcode 9 "$bin/tests/$t" --test-threads=1
        done
        for t in attention_cuda attention_wgmma_cuda decode_attention_cuda grpo_cuda ops_cuda; do
            step "sanitizer_racecheck_$t" 60 "$sanitizer" --tool racecheck --error-exitcode 9 "$bin/tests/$t" --test-threads=1
        done
    else
        echo "compute-sanitizer not found: memcheck/racecheck NOT run" | tee -a "$OUT/summary.txt"
        status=1
    fi
    ;;
train)
    # the README's main job on the GPU: CADA training on models/default, then its evaluation
    step train_gpu 150 "$cada" train --device cuda --out "$work/train_gpu" --quiet
    rm -rf "$work/train_gpu/checkpoint" "$work/train_gpu/final"  # weights: not needed back
    tail -3 "$work/train_gpu/metrics.jsonl" >> "$OUT/summary.txt" 2>/dev/null
    ;;
train_tc)
    # the same job on the tensor-core paths (bf16 GEMMs with bf16 working weights and narrowed
    # activations, the mma attention): do they train as well as the f32 defaults?
    step train_gpu_tensor_cores 150 env CADA_GEMM=bf16 CADA_ATTENTION=mma \
        "$cada" train --device cuda --out "$work/train_gpu_tc" --quiet
    rm -rf "$work/train_gpu_tc/checkpoint" "$work/train_gpu_tc/final"
    tail -3 "$work/train_gpu_tc/metrics.jsonl" >> "$OUT/summary.txt" 2>/dev/null
    ;;
bench)
    # its report is rewritten after every record, so a limit that ends it keeps what it timed
    step bench_kernels 180 "$cada" bench kernels --device cuda --json "$work/ours_kernels.json"
    # TARGETS.md's rollout shape (64 sequences, prompt 128, 256 new tokens) and its train-step
    # shape (4 × 4096); random weights. $1 = log name, $2 = records file, $3 = limit, then
    # CADA_* settings (env assignments), then rollout|train and the shape. A run under other
    # settings records another variant of the same ids (`cada bench report` takes the fastest);
    # the ablations (no graphs, one GEMM per weight) go to files outside ours_*.
    bench_step() {
        local name=$1 records=$2 limit=$3; shift 3
        local settings=(); while [[ $1 == *=* ]]; do settings+=("$1"); shift; done
        local kind=$1 shape=$2 args
        if [[ $kind == rollout ]]; then
            args=(--prompts 8 --group 8 --prompt-len 128 --new-tokens 256 --micro-batch-rows 16)
        else
            args=(--prompts 1 --group 4 --prompt-len 3840 --new-tokens 256 --micro-batch-rows 4)
        fi
        step "$name" "$limit" env "${settings[@]}" "$cada" bench step --device cuda --shape "$shape" \
            "${args[@]}" --records "$work/$records"
    }
    # in the order of what the targets need most, since the call's budget may end the list: the
    # tensor-core train step (TARGETS.md compares against HF under bf16 autocast) and rollout,
    # then the f32 defaults, then SmolLM2's rollout under each decode choice alone
    for shape in smollm2-135m qwen2.5-0.5b; do
        # bf16 GEMMs over bf16 working weights, Hopper's wgmma attention
        bench_step "bench_step_train_tc_$shape" "ours_train_tc_$shape.json" 90 \
            CADA_GEMM=bf16 CADA_ATTENTION=wgmma train "$shape"
    done
    bench_step bench_step_rollout_tc_smollm2-135m ours_rollout_tc_smollm2-135m.json 60 \
        CADA_GEMM=bf16 CADA_KV_CACHE=bf16 CADA_DECODE_ATTENTION=split_kv rollout smollm2-135m
    for shape in smollm2-135m qwen2.5-0.5b; do
        bench_step "bench_step_rollout_$shape" "ours_rollout_$shape.json" 90 rollout "$shape"
        bench_step "bench_step_train_$shape" "ours_train_$shape.json" 90 train "$shape"
    done
    # a bf16 KV cache halves the decode step's largest read; split-KV gives a block per GQA
    # group and key range
    bench_step bench_step_rollout_bf16_gemm_smollm2-135m ours_rollout_bf16_gemm_smollm2-135m.json 60 \
        CADA_GEMM=bf16 rollout smollm2-135m
    bench_step bench_step_rollout_bf16_kv_smollm2-135m ours_rollout_bf16_kv_smollm2-135m.json 60 \
        CADA_KV_CACHE=bf16 rollout smollm2-135m
    bench_step bench_step_rollout_split_kv_smollm2-135m ours_rollout_split_kv_smollm2-135m.json 60 \
        CADA_DECODE_ATTENTION=split_kv rollout smollm2-135m
    # ablations: every decode op launched one by one (what recording the step as a CUDA graph
    # buys), and one GEMM per projection weight (what stacking q/k/v and gate/up buys)
    bench_step bench_step_rollout_launched_smollm2-135m launched_rollout_smollm2-135m.json 60 \
        CADA_CUDA_GRAPHS=0 rollout smollm2-135m
    bench_step bench_step_rollout_separate_smollm2-135m separate_rollout_smollm2-135m.json 60 \
        CADA_STACKED_DECODE=0 rollout smollm2-135m
    ;;
peers|peers_hf)
    "$cada" bench shapes --set full > "$work/shapes.json"
    if [[ $phase == peers ]]; then args=(); else args=(--no-kernels --hf); fi
    step "$phase" 300 env PYTHONUNBUFFERED=1 PYTHONPATH="$bin/py" python3 "$root/bench/peers.py" \
        --shapes "$work/shapes.json" --out "$work/$phase.json" "${args[@]}"
    ;;
criterion)
    for b in "$bin"/benches/*; do
        step "bench_$(basename "$b")" 200 "$b" --bench
    done
    ;;
*) echo "unknown phase $phase (tests, train, sanitize, check, train_tc, bench, peers, peers_hf, criterion)"; status=1 ;;
esac; done
pack
exit $status
RUN
chmod +x "$stage/run_on_gpu.sh"
# what travels: the tracked files, untracked files git does not ignore, and device_out
travel_bytes=$( { git ls-files -z --cached --others --exclude-standard; find device_out -type f -print0; } |
    xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ {s += $1} END {print s}')
travel_mib=$(( (travel_bytes + 1048575) / 1048576 ))
echo "device_out: $(du -sm device_out | cut -f1) MiB; with the working tree ${travel_mib} MiB travel (limit 64)"
if (( travel_mib > 60 )); then
    echo "error: ${travel_mib} MiB would travel, over the device tool's 64 MiB (less a margin)" >&2
    exit 1
fi
echo
echo "device commands (carry: [\"device_out\"]), in order of what matters most. A session has"
echo "~15 min of device time including the machine's start, so the first call is the one that"
echo "counts; each step is time-limited and packed as it ends, and CADA_GPU_BUDGET_S caps the call:"
echo "  CADA_GPU_BUDGET_S=420 bash device_out/run_on_gpu.sh tests train sanitize   # timeout_s 480"
echo "then, only with the device time left for it (status: budget_left_s):"
echo "  CADA_GPU_BUDGET_S=300 bash device_out/run_on_gpu.sh bench peers train_tc   # timeout_s 360"
echo "  CADA_GPU_BUDGET_S=240 bash device_out/run_on_gpu.sh peers_hf               # timeout_s 300"
echo "then, here, with the two results-*.tgz unpacked side by side:"
echo "  cada bench report --ours ours_*.json --peers peers.json peers_hf.json"
