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
def subtract_product(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float) -> None:
    """``W ← W − s·B A`` in place, in float32, rounded once to ``W``'s dtype.

    One fused ``addmm`` (no ``(out, in)`` temporaries for a float32 weight). Attaching and
    loading both go through this function, so the residual base weight is bit-for-bit the
    same in both.
    """
    B, A = B.to(torch.float32), A.to(torch.float32)
    if weight.dtype == torch.float32:
        weight.addmm_(B, A, alpha=-scale)
    else:
        weight.copy_(weight.to(torch.float32).addmm_(B, A, alpha=-scale).to(weight.dtype))
