"""The one layer type lorakit inserts: a frozen ``nn.Linear`` plus an adapter form.

``print(model)`` shows ``AdaptedLinear(base_layer=Linear(...), form=LowRank(...))`` where a
layer was adapted. The base layer is kept inside so that merging and unloading give back a
plain ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core.terms import Term
from .forms import Form


class AdaptedLinear(nn.Module):
    """``y = form(x, base_layer)``: the frozen base layer with its adapter."""

    def __init__(self, base_layer: nn.Linear, form: Form) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.form = form
        self.enabled = True
        # with the adapter off, terms added to the base output: ``Σ c·B (A x)`` (``Adapter.original``)
        self.corrections: list[Term] = []

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, for code that inspects ``module.weight`` (dtype, device)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base bias, for code that reads ``module.bias`` (some architectures do)."""
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            y = self.base_layer(x)
            for B, A, coefficient in self.corrections:
                y = y + coefficient * F.linear(F.linear(x, A.to(x.dtype)), B.to(x.dtype))
            return y
        return self.form(x, self.base_layer)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Fold ``ΔW`` into the base weight and return the plain base layer."""
        weight = self.base_layer.weight
        weight.copy_(self.form.merged_weight(weight).to(weight.dtype))
        return self.base_layer
