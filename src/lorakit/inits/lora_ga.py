"""LoRA-GA: low-rank adaptation with gradient approximation (Wang et al. 2024, arXiv 2407.05000).

The calibration phase gives each target layer the mean gradient ``G = ∂L/∂W`` of the loss on a
few batches (``lorakit.inits.calibration``). With ``G = U S Vᵀ`` and ``m`` the layer's output size,

    A = Vᵀ_{1:r} · m^{1/4}/√γ,   B = U_{r+1:2r} · m^{1/4}/√γ,   W ← W − s·B A

so that the first step of the pair changes ``W`` along the best rank-2r approximation of the full
fine-tuning gradient (the paper's ``ArB2r`` split and its "stable" scale with ``γ``), and the
adapted model is unchanged at attach.

Deviations: an exact SVD of ``G`` (the paper and PEFT use ``svd_lowrank``, random); the gradient
is taken in eval mode (no dropout), so it is the same for a seed; only the paper's recommended
split (``ArB2r``) and scale (``stable``). PEFT 0.21's "stable" scale differs from the paper's and
from the authors' code: it multiplies ``B`` by the singular values ``S_{r+1:2r}`` and leaves ``A``
unscaled; lorakit follows the paper (the directions are the same, ``tests/test_data_inits.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.options import Option
from ..errors import LorakitError
from .base import INITS, SpectralInit
from .calibration import CALIBRATION_DTYPE, GRADIENTS, INIT_BATCHES, layer_data

GAMMA = Option("lora_ga_gamma", float, 16.0, "γ of LoRA-GA's stable scale m^(1/4)/√γ on both factors",
               minimum=0.0, open_minimum=True)


@INITS.register("lora_ga")
class LoRAGA(SpectralInit):
    """The pair from the SVD of the full weight's gradient; ``s·B A`` moved out of ``W``."""

    options = (*SpectralInit.options, INIT_BATCHES, CALIBRATION_DTYPE, GAMMA)
    reads: ClassVar[str] = GRADIENTS
    needs: ClassVar[str] = "sets a per-layer pair from the SVD of the weight's gradient"
    summary: ClassVar[str] = "G = ∂L/∂W = U S Vᵀ; A = V_{1:r}ᵀ c, B = U_{r+1:2r} c, c = m^¼/√γ; W ← W − s·B A"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` from the first ``r`` right singular vectors of ``G``, ``B`` from the next ``r`` left ones."""
        data = layer_data(data, torch.Tensor, "lora_ga")
        if 2 * rank > min(weight.shape):
            raise LorakitError(f"lora_ga takes 2·rank = {2 * rank} singular vectors of a ({weight.shape[0]}, "
                               f"{weight.shape[1]}) layer; use rank <= {min(weight.shape) // 2}")
        U, _, Vh = torch.linalg.svd(data.to(torch.float64), full_matrices=False)
        stable = weight.shape[0] ** 0.25 / values["lora_ga_gamma"] ** 0.5
        B, A = U[:, rank:2 * rank] * stable, Vh[:rank] * stable
        return B.to(weight.dtype).contiguous(), A.to(weight.dtype).contiguous()
