"""LoRA: ``y = W x + b + s · B (A dropout(x))``.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685.
``A`` has shape ``(r, in)``, ``B`` shape ``(out, r)``, scale ``s = α / r`` (``α / √r`` with
rsLoRA, Kalajdzievski 2023, arXiv 2312.03732). The training path applies the two thin matrices
to the activations and never forms the dense ``ΔW = s · B A``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import FORMS
from .base import Form


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    """``s = α / r``, or ``α / √r`` with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


@FORMS.register("lora")
class LowRank(Form):
    """A low-rank pair ``B A`` with scale ``s`` and input dropout."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float,
        rslora: bool = False, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.rank = rank
        self.scale = lora_scale(alpha, rank, rslora)
        self.A = nn.Parameter(torch.zeros(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        y = base(x)
        h = self.dropout(x).to(self.A.dtype)
        return y + (F.linear(F.linear(h, self.A), self.B) * self.scale).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def roles(self) -> dict[str, nn.Parameter]:
        return {"A": self.A, "B": self.B}

    @torch.no_grad()
    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:
        self.A.copy_(A)
        self.B.copy_(B)
