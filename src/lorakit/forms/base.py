"""The interface every adapter form implements, and the options all forms share."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..core.component import Component
from ..core.options import Option
from ..core.spec import MethodSpec
from ..registry import Registry

RANK = Option("rank", int, 8, "rank r of each layer's adapter (VeRA: of the shared projections)", minimum=1,
              null_is_default=False)
DROPOUT = Option("dropout", float, 0.0, "dropout on the adapter's input", minimum=0.0, maximum=1.0,
                 open_maximum=True, null_is_default=False)


class Form(Component, nn.Module):
    """Trainable ``ΔW`` attached to one frozen linear layer.

    ``forward(x, base)`` returns the adapted layer's full output; ``merged_weight(W)`` the dense
    weight that replaces ``W`` when merging (never used on the training path). ``roles()`` names
    each trainable parameter's role for optimizer recipes: ``"A"`` (the input side), ``"B"``
    (the output side), ``"gate"`` (a schedule's ``ω``) or ``"other"`` (vectors such as magnitudes).
    ``capabilities`` declares what the form supports (see ``lorakit.core.component``); a form that
    declares ``shared_input`` also takes ``forward(x, base, inner=A x)`` with its input side
    computed elsewhere (``lorakit.fused``).
    """

    kind: ClassVar[str] = "form"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    options: ClassVar[tuple[Option, ...]] = (RANK, DROPOUT)

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

    def post_init(self, base: nn.Linear) -> None:
        """Called once the factors are set and the base weight rewritten (DoRA's magnitude)."""


FORMS: Registry[type[Form]] = Registry("form")
