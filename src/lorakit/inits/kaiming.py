"""Kaiming init (LoRA's default, Hu et al. 2021, arXiv 2106.09685).

``A ~ U(−1/√in, 1/√in)`` (what ``nn.init.kaiming_uniform_(a=√5)`` gives an ``nn.Linear``
weight), ``B = 0``, so ``ΔW = 0`` at attach time and the base weight is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .base import INITS, Init


@INITS.register("kaiming")
class Kaiming(Init):
    """``B = 0``, ``A`` uniform in ``±1/√in``."""

    summary: ClassVar[str] = "B = 0, A ~ U(±1/√in)"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``B = 0``, ``A`` uniform in ``±1/√in`` drawn from ``generator``."""
        out_features, in_features = weight.shape
        bound = 1.0 / math.sqrt(in_features)
        A = torch.empty(rank, in_features, device=weight.device)
        A.uniform_(-bound, bound, generator=generator)
        B = torch.zeros(out_features, rank, device=weight.device)
        return B, A
