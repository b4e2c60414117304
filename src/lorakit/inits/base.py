"""The interface of an initialisation, and its registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import FACTORS, Component
from ..core.options import Option
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


SPECTRAL_RESIDUAL = Option(
    "spectral_residual", str, "requantize", "on a quantized base: requantize W − s·B₀A₀ (QPiSSA), or keep W and "
    "add a frozen −s·B₀A₀ path (correction: exact, disabled() is the quantized base)",
    choices=("requantize", "correction"))


class SpectralInit(Init):
    """An init that moves ``s·B₀A₀`` out of ``W`` (OLoRA, PiSSA): the initial factors are kept, and
    it needs a form with a per-layer pair to set. On a quantized base the residual is requantized,
    or kept as a frozen path (``spectral_residual``, see ``lorakit.quantized``)."""

    options: ClassVar[tuple[Option, ...]] = (SPECTRAL_RESIDUAL,)
    rewrites_base: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({FACTORS})


INITS: Registry[type[Init]] = Registry("init")
