"""The interface every adapter form implements."""

from __future__ import annotations

import torch
from torch import nn


class Form(nn.Module):
    """Trainable ``ΔW`` attached to one frozen linear layer.

    ``forward(x, base)`` returns the adapted layer's full output; ``delta_weight()`` returns the
    dense ``ΔW`` of shape ``(out, in)`` (for merging and tests only, never on the training path).
    ``roles()`` names each trainable parameter's role for optimizer recipes: ``"A"`` (the input
    side), ``"B"`` (the output side) or ``"other"`` (vectors such as magnitudes or gates).
    """

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def roles(self) -> dict[str, nn.Parameter]:  # pragma: no cover
        raise NotImplementedError

    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:  # pragma: no cover
        """Set the low-rank factors (used by inits and by loading)."""
        raise NotImplementedError
