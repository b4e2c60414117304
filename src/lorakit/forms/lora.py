"""LoRA: ``y = W x + b + s · B (A dropout(x))``.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685.
``A`` has shape ``(r, in)``, ``B`` shape ``(out, r)``, scale ``s = α / r`` (``α / √r`` with
rsLoRA, Kalajdzievski 2023, arXiv 2312.03732). The training path applies the two thin matrices
to the activations and never forms the dense ``ΔW = s · B A``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import FORMS
from .base import Form


# With half-precision activations (a bf16/fp16 model) the float32 factors are cast down, not the
# activations up: the cast costs r·(in+out) numbers instead of tokens·in, gradients still reach
# the float32 factors, and the matmuls run on the half-precision units (as under autocast).
HALF_DTYPES = (torch.bfloat16, torch.float16)


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

    @classmethod
    def build(cls, in_features: int, out_features: int, spec: Any, shared: Any) -> LowRank:
        return cls(in_features, out_features, spec.rank, spec.alpha, rslora=spec.rslora, dropout=spec.dropout)

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """``s · B (A dropout(x))``, computed in the activations' dtype when that is a half type."""
        h = self.dropout(x)
        dtype = h.dtype if h.dtype in HALF_DTYPES else self.A.dtype
        return F.linear(F.linear(h.to(dtype), self.A.to(dtype)), self.B.to(dtype)) * self.scale

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        y = base(x)
        return y + self.low_rank(x).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def roles(self) -> dict[str, nn.Parameter]:
        return {"A": self.A, "B": self.B}

    @torch.no_grad()
    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:
        self.A.copy_(A)
        self.B.copy_(B)
