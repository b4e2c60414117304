"""MiLoRA: minor singular components (Wang et al. 2024, arXiv 2406.09044).

``U, S, Vᵀ = svd(W)`` with ``S`` descending, ``m = min(out, in)``; the pair starts on the ``r``
smallest triplets, ``B = U_{m−r:m} √(S_{m−r:m} / s)``, ``A = √(S_{m−r:m} / s) V_{m−r:m}ᵀ``, and
``W ← W − s·B A``. The principal part of ``W``, which holds what pre-training learned, stays
frozen; the adapter starts in the least used directions (PiSSA does the opposite).

Deviations: the paper writes the split without a scale (``s = 1``); lorakit divides by ``s`` as
for PiSSA, so ``s·B A`` is the minor part for every ``α`` and ``r``. Exact SVD only: a
randomised SVD finds the leading triplets, not the trailing ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .base import INITS, SpectralInit
from .pissa import svd_factors


@INITS.register("milora")
class MiLoRA(SpectralInit):
    """The minor singular triplets of ``W`` as the pair; ``s·B A`` moved out of ``W``."""

    needs: ClassVar[str] = "sets a per-layer pair from the SVD of W"
    summary: ClassVar[str] = "B = U_min √(S_min/s), A = √(S_min/s) V_minᵀ (the r smallest triplets); W ← W − s·B A"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``rank`` smallest singular triplets of ``W``, split as PiSSA splits the largest."""
        return svd_factors(weight, rank, scale, None, None, minor=True)
