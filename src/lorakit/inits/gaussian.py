"""Gaussian init of AdaLoRA's SVD form (Zhang et al. 2023, arXiv 2303.10512, §3.1).

``B = P ~ N(0, 0.02²)``, ``A = Q ~ N(0, 0.02²)``, drawn from the layer's generator (``A`` first);
the SVD form's ``set_factors`` sets ``λ = 0``, so ``ΔW = 0`` at attach and the base weight is
untouched. With the plain LoRA form the random ``B A`` would change the outputs at attach time,
so ``Gaussian.validate`` allows this init with form ``svd`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import Parts
from ..core.spec import MethodSpec
from ..errors import LorakitError
from .base import INITS, Init

STD = 0.02


@INITS.register("gaussian")
class Gaussian(Init):
    """``P``, ``Q`` from ``N(0, 0.02²)`` for AdaLoRA's SVD form (whose ``λ`` starts at 0)."""

    summary: ClassVar[str] = "P, Q ~ N(0, 0.02²), λ = 0"

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.form != "svd":
            raise LorakitError(f"init 'gaussian' draws both factors at random, which would change the outputs of "
                               f"form {spec.form!r} at attach; it belongs to form 'svd' (use init='kaiming')")

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``B`` (out, r) and ``A`` (r, in), entries ``N(0, 0.02²)`` drawn from ``generator``."""
        out_features, in_features = weight.shape
        A = torch.empty(rank, in_features, device=weight.device).normal_(0.0, STD, generator=generator)
        B = torch.empty(out_features, rank, device=weight.device).normal_(0.0, STD, generator=generator)
        return B, A
