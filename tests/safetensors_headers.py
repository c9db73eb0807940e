"""Header-only safetensors checkpoints (tests/ is on sys.path): real shapes and dtypes, no tensor data, so a
7B memory plan is tested without 14 GB of weights."""

from __future__ import annotations

import json
import struct

__all__ = ["mistral_7b_header"]


def mistral_7b_header(folder, shards: int = 2) -> int:
    """A Mistral-7B-shaped checkpoint with headers only (no tensor data), in ``shards`` files; returns its
    parameter count."""
    v, h, inter, kv, layers = 32000, 4096, 14336, 1024, 32
    shapes = {"model.embed_tokens.weight": [v, h], "lm_head.weight": [v, h], "model.norm.weight": [h]}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [kv, h],
                       p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, h],
                       p + "mlp.gate_proj.weight": [inter, h], p + "mlp.up_proj.weight": [inter, h],
                       p + "mlp.down_proj.weight": [h, inter], p + "input_layernorm.weight": [h],
                       p + "post_attention_layernorm.weight": [h]})
    folder.mkdir()
    names = sorted(shapes)
    total = 0
    for k in range(shards):
        offset, header = 0, {"__metadata__": {"format": "pt"}}
        for name in names[k::shards]:
            n = 1
            for d in shapes[name]:
                n *= d
            header[name] = {"dtype": "BF16", "shape": shapes[name], "data_offsets": [offset, offset + 2 * n]}
            offset, total = offset + 2 * n, total + n
        raw = json.dumps(header).encode()
        (folder / f"model-{k + 1:05d}-of-{shards:05d}.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return total
