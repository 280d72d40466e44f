#!/usr/bin/env python3
"""Reference dequantisations for tests/gguf.rs, from the `gguf` Python package (llama.cpp's own
reader, an implementation independent of ours): random blocks of every quantised type we read,
with finite f16 scales, and the f32 values `gguf.quants.dequantize` gives for them.

    pip install gguf==0.19.0 numpy
    python3 scripts/gguf_quant_dump.py > tests/fixtures/gguf_quant_blocks.json
"""
import json
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

# byte offsets of each type's f16 fields inside a block (llama.cpp's block structs)
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
BLOCKS = 2


def main():
    rng = np.random.default_rng(20261202)
    cases = []
    for ty, offsets in F16_FIELDS.items():
        per_block, block_bytes = GGML_QUANT_SIZES[ty]
        raw = rng.integers(0, 256, size=(BLOCKS, block_bytes), dtype=np.uint8)
        for off in offsets:  # finite scales of both signs and varied magnitude
            h = (rng.uniform(-1, 1, size=BLOCKS) * 10.0 ** rng.integers(-3, 1, size=BLOCKS))
            raw[:, off:off + 2] = h.astype(np.float16).view(np.uint8).reshape(BLOCKS, 2)
        values = quants.dequantize(raw.reshape(-1), ty).reshape(-1).astype(np.float32)
        assert values.size == BLOCKS * per_block and np.isfinite(values).all()
        cases.append({"type": ty.name, "id": int(ty), "bytes": raw.tobytes().hex(),
                      "values": [float(v) for v in values]})
    json.dump({"source": "gguf (Python) quants.dequantize", "cases": cases}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
