"""CorDA: context-oriented decomposition adaptation (Yang et al. 2024, arXiv 2406.05223).

The calibration phase gives each target layer the uncentred covariance of its inputs on a few
batches, ``C = mean_s X_sᵀ X_s / max(X_s)²`` over sequences ``s`` (each scaled by its largest
entry, as the reference implementation and PEFT do; ``lorakit.inits.calibration``). The SVD of
the weight seen through the data, ``W C = U S Vᵀ``, orders its directions by how much the task's inputs use them; since
``W = U S (Vᵀ C⁻¹)``, splitting that product splits ``W`` itself. With ``V̂ᵀ = Vᵀ C⁻¹``:

    B = U_r √(S_r / s),   A = √(S_r / s) V̂_rᵀ,   W ← W − s·B A

over the ``r`` largest triplets (``ipm``, instruction-previewed mode: the adapter starts on what
the task uses most) or the ``r`` smallest (``kpm``, knowledge-preserved mode: what the data uses
most stays frozen in the residual, the adapter trains the rest). The adapted model is unchanged
at attach.

``C`` is damped before it is inverted, as PEFT does: ``C + δ·mean(diag C)·I`` with ``δ = 0.01``,
doubled until ``‖C̃ C̃⁻¹ − I‖ < 0.05``, and ``W C̃`` is decomposed. The scale of ``C`` sets how
``s·B A`` is shared between ``B`` and ``A``, so lorakit keeps the reference's. Deviations: padding
and ``-100`` labels are left out of ``X_s`` (PEFT's hook takes one unpadded sequence per forward
call); float64 throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.options import Option
from .base import INITS, SpectralInit
from .calibration import CALIBRATION_DTYPE, INIT_BATCHES, SCALED_INPUTS, InputStatistics, layer_data
from .pissa import split_pair

MODE = Option("corda_mode", str, "ipm", "ipm: the adapter starts on the r directions of W the data uses most; kpm: "
              "on the r it uses least, keeping the rest frozen", choices=("ipm", "kpm"))


@INITS.register("corda")
class CorDA(SpectralInit):
    """The pair from the SVD of ``W C`` (``C``: the inputs' covariance); ``s·B A`` moved out of ``W``."""

    options = (*SpectralInit.options, INIT_BATCHES, CALIBRATION_DTYPE, MODE)
    reads: ClassVar[str] = SCALED_INPUTS
    needs: ClassVar[str] = "sets a per-layer pair from the SVD of W times the inputs' covariance"
    summary: ClassVar[str] = "W C = U S Vᵀ; B = U_r √(S_r/s), A = √(S_r/s) (Vᵀ C⁻¹)_r; W ← W − s·B A"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``rank`` largest (``ipm``) or smallest (``kpm``) triplets of ``W C̃``, mapped back to ``W``."""
        data = layer_data(data, InputStatistics, "corda")
        damped, inverse = damped_inverse((data.scaled_outer / data.sequences).to(torch.float64))  # one layer at a time
        U, S, Vh = torch.linalg.svd(weight.to(torch.float64) @ damped, full_matrices=False)
        kept = slice(S.shape[0] - rank, None) if values["corda_mode"] == "kpm" else slice(None, rank)
        B, A = split_pair(U[:, kept], S[kept], (Vh @ inverse)[kept], scale)
        return B.to(weight.dtype), A.to(weight.dtype)


def damped_inverse(C: torch.Tensor, damp: float = 0.01, tolerance: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C̃, C̃⁻¹)``, ``C̃ = C + δ·mean(diag C)·I`` with the smallest ``δ = 0.01·2ᵏ`` that inverts well."""
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    while True:
        damped = C + damp * C.diagonal().mean() * eye
        inverse = torch.linalg.inv(damped)
        if torch.dist(damped @ inverse, eye) < tolerance:
            return damped, inverse
        damp *= 2
