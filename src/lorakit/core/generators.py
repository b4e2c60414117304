"""Seeded random generators: every random draw of an adapter comes from ``(seed, a name)``.

A layer's init draws from the generator of ``(seed, layer name)``, so adding a target leaves the
other layers' init alone; a schedule that grows a layer at step ``t`` draws from
``(seed, "<layer>@<t>")``, and LoRA-drop's shared adapters from ``(seed, "<layer>@shared")``.
"""

from __future__ import annotations

import hashlib

import torch

from .options import Option

SEED = Option("seed", int, 0, "seeds every random draw of the adapter (init, VeRA's projections, resizing); "
              "lorakit train sets it to train.seed", minimum=0, null_is_default=False)


def layer_generator(seed: int, name: str, device: torch.device | str) -> torch.Generator:
    """A generator seeded from ``(seed, name)`` by SHA-256, on ``device``."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator
