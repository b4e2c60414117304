"""The interface of an initialisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

FactorFn = Callable[[torch.Tensor, int, float, torch.Generator, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Init:
    """``factors(weight_f32, rank, scale, generator, options) -> (B (out, r), A (r, in))``.

    ``rewrites_base``: the init takes ``s·B₀A₀`` out of the base weight, so the initial factors
    must be kept to rebuild the adapted model from the original base.
    """

    factors: FactorFn
    rewrites_base: bool


@torch.no_grad()
def add_products(weight: torch.Tensor, terms: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
    """``W ← W + Σ c·B A`` in place, in float32, rounded once to ``W``'s dtype.

    Fused ``addmm`` calls (no ``(out, in)`` temporaries for a float32 weight). Spectral inits
    (``c = −s``) and Delta-LoRA's update (``±λ·s``) both go through here.
    """
    work = weight if weight.dtype == torch.float32 else weight.to(torch.float32)
    for B, A, coefficient in terms:
        work.addmm_(B.to(work.device, torch.float32), A.to(work.device, torch.float32), alpha=coefficient)
    if work is not weight:
        weight.copy_(work.to(weight.dtype))


def subtract_product(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float) -> None:
    """``W ← W − s·B A``. Attaching and loading both go through this function, so the residual
    base weight is bit-for-bit the same in both."""
    add_products(weight, [(B, A, -scale)])
