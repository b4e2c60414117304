"""Gaussian init of AdaLoRA's SVD form (Zhang et al. 2023, arXiv 2303.10512, §3.1).

``B = P ~ N(0, 0.02²)``, ``A = Q ~ N(0, 0.02²)``, drawn from the layer's generator (``A`` first);
the SVD form's ``set_factors`` sets ``λ = 0``, so ``ΔW = 0`` at attach and the base weight is
untouched. With the plain LoRA form the random ``B A`` would change the outputs at attach time,
so ``validate`` allows this init with form ``svd`` only.
"""

from __future__ import annotations

from typing import Any

import torch

from . import INITS
from .base import Init

STD = 0.02


def gaussian_factors(
    weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator, options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` (out, r) and ``A`` (r, in), entries ``N(0, 0.02²)`` drawn from ``generator``."""
    out_features, in_features = weight.shape
    A = torch.empty(rank, in_features, device=weight.device).normal_(0.0, STD, generator=generator)
    B = torch.empty(out_features, rank, device=weight.device).normal_(0.0, STD, generator=generator)
    return B, A


INITS.register("gaussian")(Init(gaussian_factors, rewrites_base=False))
