#!/usr/bin/env python3
"""Writes tests/fixtures/hf_parity/<name>/: tiny random Llama, Qwen2, Qwen3 and Phi-3 models as Hugging Face
transformers builds and saves them, and what transformers computes with them in float64 (the
trusted side of tests/hf_parity.rs, which compares cada's CPU reference with it):

  config.json, model.safetensors  the model (f32 weights), as transformers writes them
  reference.safetensors           f64: `logits` [B, T, V] (already divided by the temperature),
                                  `logp` [B, T-1] (log p of each next token),
                                  `grad.<parameter name>` for every parameter of the loss below,
                                  `loss_curve` [STEPS + 1] under torch.optim.AdamW,
                                  `gen_logits.<step>` [2, V] of a batched greedy `generate`
  reference.json                  the inputs: token ids, loss weights, temperature, AdamW settings,
                                  the generation's prompts and tokens (`generate`), and the
                                  versions that made the file

loss = −Σ_{b,t} w[b,t] · logp[b,t], the shape of cada's GRPO/SFT objectives over per-token
log-probs. Run once; CI only reads the files (no torch there):

  python3 -m pip install --target /tmp/hfenv torch transformers safetensors numpy
  PYTHONPATH=/tmp/hfenv python3 scripts/hf_parity_dump.py [--only qwen3 phi3 ...]
  PYTHONPATH=/tmp/hfenv python3 scripts/hf_parity_dump.py --smollm2 models/smollm2-135m-instruct
(the second after scripts/fetch_smollm2.sh: the real model, see smollm2() below)
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf_parity")
TEMPERATURE = 0.7
STEPS = 5
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

COMMON = dict(
    vocab_size=97,  # not a multiple of anything
    hidden_size=32,
    intermediate_size=56,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    max_position_embeddings=256,
    attn_implementation="eager",
)
MODELS = {
    # SmolLM2-like: tied embeddings, no bias; with Llama-3's rope scaling, so it is checked too
    "llama": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig(
            **COMMON,
            architectures=["LlamaForCausalLM"],
            tie_word_embeddings=True,
            attention_bias=False,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=8),
        ),
    ),
    # Qwen2.5-like: q/k/v bias, untied head, rope theta 1e6
    "qwen2": (
        transformers.Qwen2ForCausalLM,
        transformers.Qwen2Config(
            **COMMON,
            architectures=["Qwen2ForCausalLM"],
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
        ),
    ),
    # Qwen3-like: per-head q/k RMSNorm before RoPE, no bias, tied, and a head_dim (16) that is
    # not hidden / heads (8), as Qwen3's q_proj is wider than the hidden size
    "qwen3": (
        transformers.Qwen3ForCausalLM,
        transformers.Qwen3Config(
            **COMMON,
            architectures=["Qwen3ForCausalLM"],
            head_dim=16,
            tie_word_embeddings=True,
            attention_bias=False,
            use_sliding_window=False,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
        ),
    ),
    # Phi-3-like: q/k/v and gate/up fused in the checkpoint, untied, a sliding window longer
    # than the test's sequences (where it changes nothing, which is all cada supports)
    "phi3": (
        transformers.Phi3ForCausalLM,
        transformers.Phi3Config(
            **COMMON,
            architectures=["Phi3ForCausalLM"],
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            sliding_window=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    # Phi-3.5 / Phi-4-mini-like: LongRoPE (short factors, attention factor from
    # max_position_embeddings / original_max_position_embeddings = 4) and a partial rotary
    # (12 of each head's 16 dims rotated), tied; sequences within the original length, where
    # transformers uses the short factors (cada refuses longer ones)
    "phi3_longrope": (
        transformers.Phi3ForCausalLM,
        transformers.Phi3Config(
            **{**COMMON, "hidden_size": 64},
            architectures=["Phi3ForCausalLM"],
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            original_max_position_embeddings=64,
            rope_parameters=dict(
                rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                short_factor=[1.0, 1.3, 1.9, 2.6, 4.1, 7.5],
                long_factor=[1.5, 2.2, 3.9, 6.0, 11.0, 20.0],
            ),
            sliding_window=None,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
}
# the same with an original length of 8: the 11-token sequences are longer, so transformers
# rotates with the long factors, for the whole batch; and a greedy generation that crosses it
MODELS["phi3_longrope_long"] = (
    transformers.Phi3ForCausalLM,
    transformers.Phi3Config(**{**MODELS["phi3_longrope"][1].to_dict(),
                               "original_max_position_embeddings": 8,
                               "attn_implementation": "eager"}),
)
SEEDS = {"llama": 17, "qwen2": 29, "qwen3": 41, "phi3": 53, "phi3_longrope": 67,
         "phi3_longrope_long": 71}
# models whose fixture also holds a batched greedy generation (`generate` in reference.json)
GENERATE = set(MODELS)
GEN_PROMPT_LENS, GEN_NEW_TOKENS = (4, 6), 6


def build(cls, cfg, seed):
    torch.manual_seed(seed)
    model = cls(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # norms away from 1: their grads matter
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def loss_fn(model, ids, w):
    logits = model(input_ids=ids).logits / TEMPERATURE
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return -(w * logp).sum(), logits, logp


def main(only=None):
    for name, (cls, cfg) in MODELS.items():
        if only and name not in only:
            continue
        out = os.path.join(OUT, name)
        os.makedirs(out, exist_ok=True)
        model = build(cls, cfg, seed=SEEDS[name])
        cfg.to_json_file(os.path.join(out, "config.json"))
        # the tied head is the embedding: saved once, as transformers' save_pretrained does
        state = {k: v.contiguous() for k, v in model.state_dict().items()
                 if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

        g = torch.Generator().manual_seed(5)
        batch, seq = 2, 11
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
        w = torch.rand(batch, seq - 1, generator=g, dtype=torch.float64) / (batch * (seq - 1))
        w[0, 3] = 0.0  # masked tokens
        w[1, -2:] = 0.0

        ref = model.double()
        loss, logits, logp = loss_fn(ref, ids, w)
        loss.backward()
        tensors = {"logits": logits.detach(), "logp": logp.detach()}
        for pname, p in ref.named_parameters():
            tensors[f"grad.{pname}"] = p.grad.detach().clone()
        # before the AdamW curve below changes the weights
        gen = generate(ref, cfg, tensors) if name in GENERATE else None
        # a short training curve: AdamW on this batch, the loss before each step and after the last
        opt = torch.optim.AdamW(ref.parameters(), foreach=False, **ADAMW)
        curve = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss, _, _ = loss_fn(ref, ids, w)
            curve.append(loss.item())
            loss.backward()
            opt.step()
        with torch.no_grad():
            curve.append(loss_fn(ref, ids, w)[0].item())
        tensors["loss_curve"] = torch.tensor(curve, dtype=torch.float64)
        meta = dict(
            ids=ids.tolist(), weights=w.tolist(), temperature=TEMPERATURE, steps=STEPS,
            adamw=dict(lr=ADAMW["lr"], beta1=ADAMW["betas"][0], beta2=ADAMW["betas"][1],
                       eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"]),
            made_by=f"scripts/hf_parity_dump.py: torch {torch.__version__}, transformers "
                    f"{transformers.__version__}, python {sys.version.split()[0]}; float64",
        )
        if gen is not None:
            meta["generate"] = gen
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  os.path.join(out, "reference.safetensors"))
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"{name}: loss curve {curve}")


def generate(model, cfg, tensors):
    """Greedy `generate` over prompts of GEN_PROMPT_LENS tokens, left-padded into one batch as
    transformers wants: each step's raw logits [batch, V] go to tensors as `gen_logits.<step>`
    (step 0 is the prefill's); returns the prompts and the chosen tokens."""
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in GEN_PROMPT_LENS]
    width = max(GEN_PROMPT_LENS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    # eager attention in float64 turns the padded rows' fully masked softmax into NaN, which
    # the next layer's keys carry into every row; SDPA does not (same math elsewhere)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=GEN_NEW_TOKENS, min_new_tokens=GEN_NEW_TOKENS,
                             pad_token_id=0, eos_token_id=None, return_dict_in_generate=True,
                             output_logits=True)
    model.set_attn_implementation("eager")
    for step, logits in enumerate(out.logits):
        assert not logits.isnan().any(), "NaN in transformers' generate logits"
        tensors[f"gen_logits.{step}"] = logits.double()
    return dict(prompts=prompts, tokens=out.sequences[:, width:].tolist())


def smollm2(model_dir):
    """tests/fixtures/hf_parity/smollm2/: the real SmolLM2-135M-Instruct (as scripts/fetch_smollm2.sh
    converts it, f32) in float64 under transformers: its tokenizer's ids for two texts, and per
    position the next token's log-prob, the log-sum-exp and the argmax, plus the last position's
    logits (f32); and two conversations rendered by its chat template. The weights are not
    committed: the test converts the same GGUF itself."""
    out = os.path.join(OUT, "smollm2")
    os.makedirs(out, exist_ok=True)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                          attn_implementation="eager").double()
    texts = [
        "The capital of France is Paris. The capital of Germany is",
        "<|im_start|>user\nHow do I kill a Python process that hangs?<|im_end|>\n<|im_start|>assistant\n",
    ]
    meta = dict(texts=texts, ids=[], made_by=f"scripts/hf_parity_dump.py --smollm2: torch "
                f"{torch.__version__}, transformers {transformers.__version__}; float64")
    tensors = {}
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            meta["ids"].append(ids)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            lse = torch.logsumexp(logits, dim=-1)
            nxt = torch.tensor(ids[1:])
            tensors[f"logp.{i}"] = (logits[:-1].gather(-1, nxt[:, None])[:, 0] - lse[:-1]).contiguous()
            tensors[f"lse.{i}"] = lse.contiguous()
            tensors[f"argmax.{i}"] = logits.argmax(-1).double().contiguous()
            tensors[f"last_logits.{i}"] = logits[-1].float().contiguous()
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    # the chat template as transformers (jinja2) renders it; cada renders it with minijinja
    chat_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    conversations = [
        [{"role": "user", "content": "How do I kill a Python process?"}],
        [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke."}],
    ]
    meta["chat"] = [dict(messages=c, rendered=chat_tok.apply_chat_template(
        c, tokenize=False, add_generation_prompt=True)) for c in conversations]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("smollm2:", [len(x) for x in meta["ids"]], "tokens")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--smollm2":
        smollm2(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "--only":
        main(only=sys.argv[2:])  # e.g. --only qwen3: leaves the other fixtures as they are
    else:
        main()
