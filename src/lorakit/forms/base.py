"""The interface every adapter form implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..methods import MethodSpec


class Form(nn.Module):
    """Trainable ``ΔW`` attached to one frozen linear layer.

    ``forward(x, base)`` returns the adapted layer's full output; ``merged_weight(W)`` the dense
    weight that replaces ``W`` when merging (never used on the training path). ``roles()`` names
    each trainable parameter's role for optimizer recipes: ``"A"`` (the input side), ``"B"``
    (the output side) or ``"other"`` (vectors such as magnitudes or gates).

    ``has_factors``: the form holds a per-layer low-rank pair set by an init (``set_factors``).
    ``rank_within_shape``: the rank may not exceed ``min(out, in)``.
    """

    has_factors = True
    rank_within_shape = True

    @classmethod
    def shared(cls, spec: MethodSpec, targets: list[nn.Linear]) -> Any:
        """State shared by all of a model's adapted layers (``None`` unless the form has some)."""
        return None

    @classmethod
    def build(cls, in_features: int, out_features: int, spec: MethodSpec, shared: Any) -> Form:
        """The form for one layer of shape ``(out_features, in_features)``."""
        raise NotImplementedError  # pragma: no cover

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The dense weight that replaces ``weight`` when the adapter is merged (float32)."""
        return weight.to(torch.float32) + self.delta_weight()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """``(B', A')`` with ``B' A'`` the form's additive ``ΔW`` (scale, gates and diagonals folded
        into ``B'``): the form as one plain LoRA pair, for merging and for the PEFT export."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The dense additive ``ΔW = B' A'`` (DoRA rescales ``W + ΔW`` on top of it)."""
        B, A = self.factors()
        return B @ A

    def roles(self) -> dict[str, nn.Parameter]:  # pragma: no cover
        raise NotImplementedError

    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:  # pragma: no cover
        """Set the low-rank factors (used by inits and by loading)."""
        raise NotImplementedError

    def post_init(self, base: nn.Linear) -> None:
        """Called once the factors are set and the base weight rewritten (DoRA's magnitude)."""
