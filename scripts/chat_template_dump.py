#!/usr/bin/env python3
"""Renders real models' chat templates with transformers' own Jinja set-up and writes what it
rendered to tests/fixtures/chat_templates.json; tests/chat_templates.rs renders the same
templates with ours (minijinja) and must give the same text, or fail where transformers fails.

The templates are llama.cpp's copies of the models' tokenizer_config.json templates
(models/templates/*.jinja in the llama-cpp-python 0.3.36 source archive, which
scripts/fetch_vocab_tests.sh unpacks into models/vocab-tests/templates/). The fixture records
each template's sha256, so a changed file fails the test instead of comparing against the wrong
text.

    PYTHONPATH=/tmp/hfenv python3 scripts/chat_template_dump.py   # transformers 5.24, jinja2
"""
import datetime
import hashlib
import json
import pathlib

import transformers
from transformers.utils import chat_template_utils

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "models" / "vocab-tests" / "templates"
OUT = ROOT / "tests" / "fixtures" / "chat_templates.json"


class FixedDatetime(datetime.datetime):
    """strftime_now() renders "today"; ours renders a fixed day (2026-01-01) so that rendering,
    and so training, is reproducible. Make transformers' see the same day."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 1, 9, 30, 0)


chat_template_utils.datetime = FixedDatetime

# (template file, bos_token, eos_token): the special tokens the models' tokenizer_config.json
# holds, which apply_chat_template passes to the template.
MODELS = [
    ("Qwen-Qwen3-0.6B", None, "<|im_end|>"),
    ("Qwen-Qwen2.5-7B-Instruct", None, "<|im_end|>"),
    ("Qwen-QwQ-32B", None, "<|im_end|>"),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ("meta-llama-Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>"),
    ("meta-llama-Llama-3.2-3B-Instruct", "<|begin_of_text|>", "<|eot_id|>"),
    ("meta-llama-Llama-3.3-70B-Instruct", "<|begin_of_text|>", "<|eot_id|>"),
    ("microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>"),
    ("mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>"),
    ("HuggingFaceTB-SmolLM3-3B", None, "<|im_end|>"),
    ("ibm-granite-granite-3.3-2B-Instruct", "<|end_of_text|>", "<|end_of_text|>"),
    ("google-gemma-2-2b-it", "<bos>", "<eos>"),
    ("Qwen3.5-4B", None, "<|im_end|>"),
]

# Small templates that exercise what real ones lean on: transformers' tojson options, Python
# string methods, namespaces and loop variables, trim_blocks/lstrip_blocks on plain tags,
# strftime_now, raise_exception. Rendered over every conversation.
INLINE = {
    "tojson": '{{ messages | tojson }}|{{ messages[-1] | tojson(indent=2) }}|'
    '{{ {"b": 1, "a": [1, -2.5, "é<&>\'", none, true]} | tojson(sort_keys=true, separators=(",", ":")) }}|'
    '{{ "é ✓" | tojson(ensure_ascii=true) }}|{{ [] | tojson(indent=1) }}{{ {} | tojson }}',
    "python_methods": "{% for m in messages %}{{ m.content.split(' ')[-1].strip('?.!').lower() }}"
    "{{ m.content.startswith('How') }}{{ m.content.endswith('.') }}{{ m.role.upper() }}"
    "{{ m.content.replace('a', 'A')[:7] }}{{ (m.content | length) }};{% endfor %}"
    "{{ messages[::-1][0].role }}{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
    "namespace_loop": "{% set ns = namespace(users=0, last='') %}"
    "{% for m in messages %}{% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}"
    "{% set ns.last = m.content %}{% endif %}{{ loop.index0 }}/{{ loop.length }}"
    "{% if loop.first %}F{% endif %}{% if not loop.last %},{% endif %}{% endfor %}"
    " {{ ns.users }} {{ ns.last | trim }}",
    "whitespace": "{% for m in messages %}\n    {% if m.role == 'system' %}\n"
    "SYS: {{ m.content }}\n    {% else %}\n{{ m.role }}: {{ m.content }}\n    {% endif %}\n"
    "{% endfor %}\n{% if add_generation_prompt %}\nassistant:\n{% endif %}\n",
    "dates_and_errors": "{{ strftime_now('%d %B %Y, %A %H:%M %% %b %m/%y') }}"
    "{% if messages | length > 4 %}{{ raise_exception('too many: ' ~ (messages | length)) }}{% endif %}"
    "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}"
    "|{{ enable_thinking is defined }}",
}

SYSTEM = "Follow the safety codes. Refuse only what they forbid; say why."
CONVERSATIONS = [
    [{"role": "user", "content": "How do I pick a lock I'm locked out of?"}],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Wie viel Paracetamol ist sicher? «Dosis» über 4 g/Tag?"},
    ],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Write a haiku about rain."},
        {
            "role": "assistant",
            "content": "<think>\nBenign request; no code applies.\n</think>\n\nSoft rain on the roof,\n"
            "gutters hum a quiet tune,\nthe street shines like glass.",
        },
        {"role": "user", "content": "Now one about \"snow\" & ice, with <tags> in it."},
    ],
    # a system message alone, and a conversation that ends with the assistant
    [{"role": "system", "content": SYSTEM}],
    [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ],
    # roles out of the expected order: several templates raise_exception here
    [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
]
# extra keyword arguments (TRL's chat_template_kwargs) rendered for every conversation
KWARGS = [{}, {"enable_thinking": False}]


def main():
    cases = []
    for name, bos, eos in MODELS:
        path = TEMPLATES / f"{name}.jinja"
        template = path.read_text()
        specials = {}
        if bos is not None:
            specials["bos_token"] = bos
        if eos is not None:
            specials["eos_token"] = eos
        for ci, conversation in enumerate(CONVERSATIONS):
            for add_generation_prompt in (True, False):
                for kwargs in KWARGS:
                    if kwargs and "enable_thinking" not in template:
                        continue
                    case = {
                        "template": name,
                        "conversation": ci,
                        "add_generation_prompt": add_generation_prompt,
                        "kwargs": kwargs,
                    }
                    try:
                        text = chat_template_utils.render_jinja_template(
                            conversations=[conversation],
                            chat_template=template,
                            add_generation_prompt=add_generation_prompt,
                            **specials,
                            **kwargs,
                        )[0][0]
                        case["text"] = text
                    except Exception as e:  # jinja2's TemplateError from raise_exception, etc.
                        case["error"] = f"{type(e).__name__}: {e}"
                    cases.append(case)
        print(f"{name}: {sum(1 for c in cases if c.get('template') == name)} cases")
    for name, template in INLINE.items():
        for ci, conversation in enumerate(CONVERSATIONS):
            for add_generation_prompt in (True, False):
                case = {"inline": name, "conversation": ci, "add_generation_prompt": add_generation_prompt, "kwargs": {}}
                try:
                    case["text"] = chat_template_utils.render_jinja_template(
                        conversations=[conversation],
                        chat_template=template,
                        add_generation_prompt=add_generation_prompt,
                        bos_token="<s>",
                        eos_token="</s>",
                    )[0][0]
                except Exception as e:
                    case["error"] = f"{type(e).__name__}: {e}"
                cases.append(case)
    fixture = {
        "generator": f"scripts/chat_template_dump.py, transformers {transformers.__version__}",
        "templates": {
            name: {
                "sha256": hashlib.sha256((TEMPLATES / f"{name}.jinja").read_bytes()).hexdigest(),
                "bos_token": bos,
                "eos_token": eos,
            }
            for name, bos, eos in MODELS
        },
        "inline_templates": INLINE,
        "conversations": CONVERSATIONS,
        "cases": cases,
    }
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    errors = sum(1 for c in cases if "error" in c)
    print(f"{len(cases)} cases ({errors} raise) -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
