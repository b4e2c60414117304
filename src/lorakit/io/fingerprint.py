"""A fingerprint of the base weights an adapter was trained on.

The hash covers each target layer's name, shape and an evenly strided sample of up to 4096 of
its values rounded to bfloat16 (so the same checkpoint loaded in float32 or bfloat16 matches;
a float16 copy has already rounded its values differently and does not), taken before any init
rewrites the weight (of a quantized layer: its dequantized values). Loading an adapter onto a model
whose fingerprint differs fails with a clear error instead of silently producing a wrong model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from ..quantized import base_weight

SAMPLE = 4096


@torch.no_grad()
def fingerprint(layers: Iterable[tuple[str, nn.Linear]]) -> str:
    """Hex sha256 over the names, shapes and sampled values of the layers' weights."""
    digest = hashlib.sha256()
    for name, module in layers:
        weight = base_weight(module)  # a quantized layer's dequantized values
        flat = weight.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLE)
        sample = flat[::step][:SAMPLE].to(device="cpu", dtype=torch.bfloat16).contiguous()
        digest.update(f"{name}|{tuple(weight.shape)}|".encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()
