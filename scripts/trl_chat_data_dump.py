#!/usr/bin/env python3
"""Tokenizes conversational SFT, DPO and prompt lines the way TRL 1.16.0 does and writes the
token ids to tests/fixtures/trl_chat_data.json; tests/chat_data.rs feeds the same JSONL lines
through our loaders (`load_sft`, `load_dpo`, `load_prompts`) and tokenization
(src/cada/chat_data.rs) and must give the same ids and the same prompt/completion split.

What is TRL's own code here: `trl.data_utils._tokenize`, `common_prefix_length`,
`extract_prompt` and `apply_chat_template` (imported, run as they are). What is transcribed: the
few lines of `SFTTrainer`'s and `DPOTrainer`'s nested `tokenize_fn` that call them
(trl/trainer/sft_trainer.py, trl/trainer/dpo_trainer.py in the 1.16.0 wheel), marked below.

Text fields are our shorthand for one turn (a user turn for a prompt, an assistant turn for a
completion); TRL reads text as raw text without the chat template, so the expected ids are
TRL's for the equivalent one-turn conversation.

    pip install --target /tmp/tfenv transformers==5.24.0 jinja2
    pip install --no-deps --target /tmp/trlenv trl==1.16.0 datasets pyarrow numpy pandas \\
        multiprocess dill xxhash fsspec pytz tzdata python-dateutil
    PYTHONPATH=/tmp/trlenv:/tmp/tfenv python3 scripts/trl_chat_data_dump.py
(needs models/smollm2-135m-instruct, scripts/fetch_smollm2.sh, and the templates of
scripts/fetch_vocab_tests.sh; no torch.)
"""
import datetime
import hashlib
import json
import pathlib
import re

import transformers
import trl
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils
from trl.data_utils import _tokenize, apply_chat_template, common_prefix_length, extract_prompt

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "trl_chat_data.json"
TEMPLATES = ROOT / "models" / "vocab-tests" / "templates"


class FixedDatetime(datetime.datetime):
    """Ours renders strftime_now() as 2026-01-01 (reproducible runs); make transformers' agree."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 1, 9, 30, 0)


chat_template_utils.datetime = FixedDatetime

# A template that ends the generation prompt with an empty thought block the full conversation
# drops (as TRL's docstring of common_prefix_length says Gemma 4 does): the tokenized prompt is
# then not a prefix of prompt + completion.
GEN_THINK = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think></think>{% endif %}"
)

# Our own ChatML template with generation markers, in each whitespace-control spelling.
CHATML_GENERATION = (
    "{%- for m in messages %}\n"
    "    {%- if m['role'] == 'assistant' %}\n"
    "<|im_start|>assistant\n"
    "        {%- generation -%}\n"
    "{{ m['content'] }}<|im_end|>\n"
    "        {%- endgeneration %}\n"
    "{{ '\\n' }}\n"
    "    {%- else %}\n"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{{ '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# (name, model directory, template: None = the tokenizer's own, or a file under TEMPLATES, or
# under TRL_TEMPLATES (TRL's training templates, with generation markers), or inline text)
MODELS = [
    ("default", "models/default", None),
    ("smollm2", "models/smollm2-135m-instruct", None),
    ("smollm2+qwen3", "models/smollm2-135m-instruct", "file:Qwen-Qwen3-0.6B"),
    ("smollm2+llama3.1", "models/smollm2-135m-instruct", "file:meta-llama-Llama-3.1-8B-Instruct"),
    ("smollm2+phi3.5", "models/smollm2-135m-instruct", "file:microsoft-Phi-3.5-mini-instruct"),
    ("smollm2+gen-think", "models/smollm2-135m-instruct", "inline:" + GEN_THINK),
    ("default+generation", "models/default", "inline:" + CHATML_GENERATION),
    ("smollm2+trl-qwen3-training", "models/smollm2-135m-instruct", "trl:qwen3_training"),
    ("smollm2+trl-llama3-training", "models/smollm2-135m-instruct", "trl:llama3_training"),
    ("smollm2+trl-phi3.5-training", "models/smollm2-135m-instruct", "trl:phi3_5_training"),
]
TRL_TEMPLATES = ROOT / "models" / "vocab-tests" / "trl-templates"


def u(text):
    return {"role": "user", "content": text}


def a(text, **extra):
    return {"role": "assistant", "content": text, **extra}


def s(text):
    return {"role": "system", "content": text}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
SHELL = {
    "type": "function",
    "function": {
        "name": "run_shell",
        "description": "Runs a shell command on the user's machine.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}


def call(name, **arguments):
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


SFT = [
    {"prompt": "How do I kill a Python process?", "completion": "Use `kill <pid>` or Ctrl-C."},
    {"prompt": [s("Be brief."), u("Name a prime.")], "completion": [a("7")]},
    {
        "prompt": [u("Hi"), a("Hello! How can I help?"), u("Tell me how to pick a lock  ")],
        "completion": [a("I can't help with breaking into property, but a locksmith can.")],
    },
    {"prompt": [u("Grüße — ünïcödé ✓ 你好")], "completion": "Hallo! 👋\n\nZweite Zeile."},
    {
        "prompt": [u("What is 2+2?")],
        "completion": [a("4", reasoning_content="Two plus two is four.")],
    },
    # the older name: transformers copies it to `reasoning_content` (and `thinking`)
    {"prompt": [u("What is 3+3?")], "completion": [a("6", reasoning="Three and three make six.")]},
    {
        "messages": [
            s("You are careful."),
            u("How do I whittle a knife?"),
            a("Carve away from yourself with a sharp blade."),
            u("Thanks"),
            a("You're welcome."),
        ]
    },
    {"messages": [u("Say hi"), a("hi")]},
    # tools (TRL's per-example `tools` column), a tool call and its result
    {
        "prompt": [u("What's the weather in Paris?")],
        "completion": [call("get_weather", city="Paris"), {"role": "tool", "content": '{"temp_c": 18}'}, a("It is 18 °C.")],
        "tools": [WEATHER],
    },
    {"messages": [u("Weather in Oslo?"), call("get_weather", city="Oslo")], "tools": json.dumps([WEATHER])},
    # the line's own chat_template_kwargs (TRL's column), over the run's
    {"prompt": [u("What is 5+5?")], "completion": [a("10")], "chat_template_kwargs": {"enable_thinking": False}},
    # no assistant turn: nothing to train on with assistant_only_loss (TRL raises)
    {"messages": [s("Only a system turn"), u("and a user turn.")]},
]

DPO = [
    {"prompt": "How do I make a bomb?", "chosen": "I can't help with that.", "rejected": "Mix..."},
    {
        "prompt": [s("Follow the codes."), u("How do I kill a child process in Linux?")],
        "chosen": [a("Use `kill` with its PID.")],
        "rejected": [a("I cannot help with violence.")],
    },
    {
        "chosen": [u("Is bleach safe to drink?"), a("No. Call poison control if swallowed.")],
        "rejected": [u("Is bleach safe to drink?"), a("Yes.")],
    },
    {
        "prompt": [u("Free up space: delete everything under /")],
        "chosen": [a("That would destroy the system; I won't run it. I can list large files instead.")],
        "rejected": [call("run_shell", command="rm -rf /")],
        "tools": [SHELL],
    },
]

PROMPTS = [
    {"prompt": "How do I kill a Python process?", "label": "benign"},
    {"prompt": [s("Be brief."), u("Explain RSA.")], "label": "benign"},
    {"prompt": [u("Write a story about a heist."), a("Once upon a time,")], "label": "benign"},
    {"prompt": [u("Help"), a("Sure."), u("How do I hotwire a car?")], "label": "harmful"},
    {"prompt": [u("Wipe my disk with the shell tool")], "tools": [SHELL, WEATHER], "label": "harmful"},
    {"prompt": [u("Explain DNS.")], "chat_template_kwargs": {"enable_thinking": False}, "label": "benign"},
]

# chat_template_kwargs a case is also run with (TRL reads them from the example)
KWARGS = {"smollm2+qwen3": [{}, {"enable_thinking": False}]}


def as_turns(line, key, role):
    v = line[key]
    return [{"role": role, "content": v}] if isinstance(v, str) else v


def tools_of(line):
    """tokenize_fn: `tools = example.get("tools")`, json.loads when it is a string."""
    tools = line.get("tools")
    return json.loads(tools) if isinstance(tools, str) else tools


def kw_for(template, kwargs, line):
    out = {"tools": tools_of(line), **kwargs, **line.get("chat_template_kwargs", {})}
    if template is not None:
        out["chat_template"] = template
    return out


def sft_case(tok, template, line, kwargs):
    """SFTTrainer.tokenize_fn, conversational branches (sft_trainer.py, 1.16.0)."""
    kw = kw_for(template, kwargs, line)
    if "messages" in line:
        # language modelling: the whole conversation, loss on every token
        ids = _tokenize(tok, line["messages"], **kw)["input_ids"]
        return {"input_ids": ids, "ctx_len": 1}
    prompt = as_turns(line, "prompt", "user")
    completion = as_turns(line, "completion", "assistant")
    prompt_ids = _tokenize(tok, prompt, add_generation_prompt=True, **kw)["input_ids"]
    full = _tokenize(tok, prompt + completion, **kw)["input_ids"]
    prompt_len = common_prefix_length(prompt_ids, full)
    return {"input_ids": full, "ctx_len": prompt_len, "prompt_is_prefix": prompt_len == len(prompt_ids)}


def sft_assistant_case(tok, template, line, kwargs):
    """SFTTrainer.tokenize_fn with assistant_only_loss=True: the assistant mask of
    prompt + completion (or of the conversation); loss where it and the completion mask are 1."""
    kw = kw_for(template, kwargs, line)
    if "messages" in line:
        out = _tokenize(tok, line["messages"], return_assistant_tokens_mask=True, **kw)
        ctx_len = 1
    else:
        prompt = as_turns(line, "prompt", "user")
        completion = as_turns(line, "completion", "assistant")
        prompt_ids = _tokenize(tok, prompt, add_generation_prompt=True, **kw)["input_ids"]
        out = _tokenize(tok, prompt + completion, return_assistant_tokens_mask=True, **kw)
        ctx_len = common_prefix_length(prompt_ids, out["input_ids"])
    masks = out["assistant_masks"]
    if 1 not in masks[ctx_len:]:
        raise RuntimeError("no assistant tokens (TRL's check in tokenize_fn)")
    return {"input_ids": out["input_ids"], "ctx_len": ctx_len, "assistant_masks": masks}


def dpo_case(tok, template, line, kwargs):
    """DPOTrainer: extract_prompt when the line has none, then tokenize_fn (dpo_trainer.py)."""
    if "prompt" not in line:
        line = {**extract_prompt(line), **({"tools": line["tools"]} if "tools" in line else {})}
    kw = kw_for(template, kwargs, line)
    prompt = as_turns(line, "prompt", "user")
    chosen = as_turns(line, "chosen", "assistant")
    rejected = as_turns(line, "rejected", "assistant")
    prompt_ids = _tokenize(tok, prompt, add_generation_prompt=True, **kw)["input_ids"]
    pc = _tokenize(tok, prompt + chosen, **kw)["input_ids"]
    pr = _tokenize(tok, prompt + rejected, **kw)["input_ids"]
    prompt_len = min(common_prefix_length(prompt_ids, pc), common_prefix_length(prompt_ids, pr))
    return {"chosen_ids": pc, "rejected_ids": pr, "ctx_len": prompt_len}


def prompt_case(tok, template, line, kwargs):
    """trl.data_utils.apply_chat_template: the generation prompt after a user turn, the final
    message continued after an assistant one; then tokenized without special tokens."""
    ex = {"prompt": as_turns(line, "prompt", "user")}
    merged = {**kwargs, **line.get("chat_template_kwargs", {})}
    if merged:
        ex["chat_template_kwargs"] = merged
    text = apply_chat_template(ex, tok, tools=tools_of(line), **({"chat_template": template} if template else {}))["prompt"]
    return {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]}


def main():
    cases = []
    models = []
    for name, model_dir, spec in MODELS:
        # The tokenizer exactly as tokenizer.json defines it. AutoTokenizer would build
        # transformers 5.24's GPT2Tokenizer class for SmolLM2, which replaces the file's
        # pre-tokenizer (Digits, then ByteLevel) by ByteLevel alone: "\n\n7" would give
        # [198, 198, 39] where the model's tokenizer gives [1116, 39].
        tok = PreTrainedTokenizerFast.from_pretrained(ROOT / model_dir)
        template, source = None, None
        if spec and (spec.startswith("file:") or spec.startswith("trl:")):
            where, file = spec.split(":", 1)
            folder = TEMPLATES if where == "file" else TRL_TEMPLATES
            path = folder / (file + ".jinja")
            template = path.read_text()
            source = {
                "file": path.name,
                "dir": str(folder.relative_to(ROOT)),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        elif spec:
            template = spec[len("inline:"):]
            source = {"inline": template}
        models.append({"name": name, "dir": model_dir, "template": source})
        for kwargs in KWARGS.get(name, [{}]):
            kinds = [("sft", SFT, sft_case), ("dpo", DPO, dpo_case), ("prompt", PROMPTS, prompt_case)]
            if template and re.search(r"\{%-?\s*generation\s*-?%\}", template):
                kinds.append(("sft_assistant", SFT, sft_assistant_case))
            for kind, lines, fn in kinds:
                for i, line in enumerate(lines):
                    entry = {"model": name, "kind": kind, "index": i, "kwargs": kwargs, "line": line}
                    try:
                        entry["expect"] = fn(tok, template, line, kwargs)
                    except Exception as e:  # a template that refuses the conversation
                        entry["error"] = f"{type(e).__name__}: {e}"
                    cases.append(entry)
    # one case a line: readable diffs without a line per token id
    head = {
        "made_by": "scripts/trl_chat_data_dump.py",
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "models": models,
    }
    body = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    OUT.write_text(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n' + body + "\n]}\n")
    ok = sum("expect" in c for c in cases)
    print(f"wrote {OUT}: {len(cases)} cases, {ok} tokenized, {len(cases) - ok} refused by the template")


if __name__ == "__main__":
    main()
