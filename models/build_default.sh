#!/usr/bin/env bash
# Rebuilds the default demonstration model (models/default) and the prompt sets
# (models/prompts/{train,heldout}.jsonl) from scratch: synthetic corpus → BPE tokenizer →
# random 3-layer Llama → 150 SFT steps. About 5 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -- build-default-model --out models/default --sft-steps 150 --seed 1234 "$@"
