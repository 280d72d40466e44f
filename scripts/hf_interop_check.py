#!/usr/bin/env python3
"""Round trip through Hugging Face transformers, one small random model per architectures cada
loads (Llama, Qwen2, Qwen3, Mistral, Phi-3): transformers builds and saves it (with
models/default's tokenizer), `cada score` scores two token sequences on it, `cada sft` trains it
two steps and saves it, transformers loads what cada saved, and both scorings are compared with
transformers' float64 log-probs. It checks what the parity fixtures (tests/hf_parity.rs) do not:
that a directory saved by transformers' save_pretrained loads in cada, and one saved by cada
loads in transformers (config fields, fused Phi-3 tensors, tied heads) and computes the same.

Needs torch and transformers (not in CI):

  python3 -m pip install --target /tmp/hfenv torch transformers safetensors numpy
  cargo build --release
  PYTHONPATH=/tmp/hfenv python3 scripts/hf_interop_check.py [--cada target/release/cada]

Exits 1 if any log-prob differs from transformers' by more than 1e-5 (f32 against f64).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
COMMON = dict(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
MODELS = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **COMMON, tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **COMMON, head_dim=24, tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"])),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        **COMMON, sliding_window=None, architectures=["MistralForCausalLM"])),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **COMMON, sliding_window=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        architectures=["Phi3ForCausalLM"])),
    # Phi-4-mini's shape of RoPE: LongRoPE over 12 of each head's 16 dims
    "phi3_longrope": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **COMMON, sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        original_max_position_embeddings=128, architectures=["Phi3ForCausalLM"],
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                             short_factor=[1.0, 1.1, 1.7, 2.9, 5.0, 9.0],
                             long_factor=[2.0, 2.5, 4.0, 8.0, 16.0, 32.0]))),
    # the same beyond its original length (8; the sequences are 9 tokens): the long factors
    "phi3_longrope_long": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **COMMON, sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        original_max_position_embeddings=8, architectures=["Phi3ForCausalLM"],
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                             short_factor=[1.0, 1.1, 1.7, 2.9, 5.0, 9.0],
                             long_factor=[2.0, 2.5, 4.0, 8.0, 16.0, 32.0]))),
}
SEQS = [([5, 17, 99, 300, 12], [44, 8, 901, 3]), ([1, 2, 3], [1000, 7, 7, 7, 250, 64])]


def transformers_logprobs(model_dir):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager")
    out = []
    with torch.no_grad():
        for prompt, completion in SEQS:
            ids = prompt + completion
            lp = torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0], -1)
            out.append([lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(completion)])
    return type(m).__name__, out


def cada_logprobs(cada, model_dir, work):
    inp, scored = os.path.join(work, "in.jsonl"), os.path.join(work, "scored.jsonl")
    with open(inp, "w") as f:
        for p, c in SEQS:
            f.write(json.dumps({"prompt_ids": p, "completion_ids": c}) + "\n")
    subprocess.run([cada, "score", "--device", "cpu", "--model", model_dir, "--input", inp,
                    "--output", scored], check=True, capture_output=True)
    return [json.loads(line)["logprobs"] for line in open(scored)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cada", default=os.path.join(ROOT, "target", "release", "cada"))
    args = ap.parse_args()
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        sft_data = os.path.join(tmp, "sft.jsonl")
        with open(sft_data, "w") as f:
            f.write(json.dumps({"prompt": "How do I kill a Python process?",
                                "completion": "Use kill -9 with its id."}) + "\n")
        for name, build in MODELS.items():
            torch.manual_seed(0)
            src = os.path.join(tmp, name)
            build().float().save_pretrained(src, safe_serialization=True)
            for f in ["tokenizer.json", "tokenizer_config.json"]:
                shutil.copy(os.path.join(ROOT, "models", "default", f), src)
            tuned = os.path.join(tmp, name + "_sft")
            subprocess.run([args.cada, "sft", "--device", "cpu", "--model", src, "--data", sft_data,
                            "--out", tuned, "--steps", "2", "--batch-size", "1"],
                           check=True, capture_output=True)
            for what, d in [("saved by transformers", src), ("trained and saved by cada", tuned)]:
                cls, ref = transformers_logprobs(d)
                ours = cada_logprobs(args.cada, d, tmp)
                worst = max(abs(a - b) for r, o in zip(ref, ours) for a, b in zip(r, o))
                worst_all = max(worst_all, worst)
                print(f"{name:8s} {what:26s} transformers loads it as {cls}; "
                      f"max |cada − transformers| log-prob {worst:.1e}")
    print(f"worst {worst_all:.1e} (bound 1e-5)")
    sys.exit(0 if worst_all < 1e-5 else 1)


if __name__ == "__main__":
    main()
