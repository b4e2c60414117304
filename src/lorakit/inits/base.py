"""The interface of an initialisation, and its registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import FACTORS, Component
from ..registry import Registry


class Init(Component):
    """How a layer's pair starts: ``factors(weight_f32, rank, scale, generator, values) -> (B (out, r),
    A (r, in))``, ``values`` the method's option values.

    ``rewrites_base``: the init takes ``s·B₀A₀`` out of the base weight, so the initial factors
    must be kept to rebuild the adapted model from the original base.
    """

    kind: ClassVar[str] = "init"
    rewrites_base: ClassVar[bool] = False

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class SpectralInit(Init):
    """An init that moves ``s·B₀A₀`` out of ``W`` (OLoRA, PiSSA): the initial factors are kept, and
    it needs a form with a per-layer pair to set."""

    rewrites_base: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({FACTORS})


INITS: Registry[type[Init]] = Registry("init")
