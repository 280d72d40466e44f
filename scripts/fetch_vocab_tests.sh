#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer test vocabularies (vocabulary-only GGUF files with test strings
# and the token ids Hugging Face's own tokenizers give for them: models/ggml-vocab-*.gguf,
# .gguf.inp, .gguf.out) from the llama-cpp-python 0.3.36 source archive on PyPI, which vendors
# llama.cpp, into the git-ignored models/vocab-tests/. tests/gguf_vocab.rs compares our GGUF
# tokenizer conversion with those ids. The same archive's models/templates/*.jinja (llama.cpp's
# copies of real models' chat templates) go to models/vocab-tests/templates/ for
# tests/chat_templates.rs, and TRL's training templates (below) to models/vocab-tests/trl-templates/.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/vocab-tests
names="qwen2 llama-bpe gpt-2 starcoder refact command-r llama-spm phi-3"
have=1
templates="Qwen-Qwen3-0.6B Qwen-Qwen2.5-7B-Instruct Qwen-QwQ-32B deepseek-ai-DeepSeek-R1-Distill-Qwen-32B
    deepseek-ai-DeepSeek-R1-Distill-Llama-8B meta-llama-Llama-3.1-8B-Instruct meta-llama-Llama-3.2-3B-Instruct
    meta-llama-Llama-3.3-70B-Instruct microsoft-Phi-3.5-mini-instruct mistralai-Mistral-Nemo-Instruct-2407
    HuggingFaceTB-SmolLM3-3B ibm-granite-granite-3.3-2B-Instruct google-gemma-2-2b-it Qwen3.5-4B"
for n in $names; do [[ -f "$dest/ggml-vocab-$n.gguf.out" ]] || have=0; done
for t in $templates; do [[ -f "$dest/templates/$t.jinja" ]] || have=0; done
if (( ! have )); then
    url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
    sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 - "$url" "$tmp/src.tar.gz" <<'PY'
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PY
    echo "$sha  $tmp/src.tar.gz" | sha256sum -c --quiet
    mkdir -p "$dest"
    for n in $names; do
        for ext in gguf gguf.inp gguf.out; do
            tar xzf "$tmp/src.tar.gz" -C "$dest" --strip-components=4 \
                "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-$n.$ext"
        done
    done
    mkdir -p "$dest/templates"
    for t in $templates; do
        tar xzf "$tmp/src.tar.gz" -C "$dest/templates" --strip-components=5 \
            "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/$t.jinja"
    done
fi
# TRL 1.16.0's training chat templates (the models' templates with {% generation %} markers
# around the assistant's output, for assistant-only SFT loss) from its wheel on PyPI, for
# tests/chat_data.rs, into models/vocab-tests/trl-templates/.
trl_templates="qwen3_training llama3_training qwen2_5_training gemma_training phi3_5_training"
have=1
for t in $trl_templates; do [[ -f "$dest/trl-templates/$t.jinja" ]] || have=0; done
if (( ! have )); then
    tmp2=$(mktemp -d)
    trap 'rm -rf "$tmp2" ${tmp:+"$tmp"}' EXIT
    python3 -m pip download --quiet --no-deps trl==1.16.0 -d "$tmp2"
    echo "c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396  $tmp2/trl-1.16.0-py3-none-any.whl" \
        | sha256sum -c --quiet
    python3 -m zipfile -e "$tmp2/trl-1.16.0-py3-none-any.whl" "$tmp2/wheel"
    mkdir -p "$dest/trl-templates"
    for t in $trl_templates; do
        cp "$tmp2/wheel/trl/chat_templates/$t.jinja" "$dest/trl-templates/"
    done
fi
echo "$dest"
