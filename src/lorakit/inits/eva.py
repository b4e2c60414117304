"""EVA: explained variance adaptation (Paischer et al. 2024, arXiv 2410.07170).

For each target layer, the inputs ``x`` it sees on a few batches of the training data give the
centred covariance ``C`` (``lorakit.inits.calibration``). Its eigenvectors ``v_1, v_2, …`` by
decreasing eigenvalue ``λ_1 ≥ λ_2 ≥ …`` are the right singular vectors of the centred inputs, and
the pair starts as ``A = [v_1 … v_r]ᵀ``, ``B = 0``: the adapter starts where the layer's inputs
vary most, and the adapted model is the base model at attach.

Ranks: every layer offers its ``⌊ρ·r⌉`` leading components, scored by their explained variance
ratio ``λ_i / Σ_j λ_j``; the ``r·L`` best of all layers are kept (``L`` layers), so a layer gets
between 0 and ``ρ·r`` components (``ρ = 1``: every layer at ``r``). A layer given none has no
adapter. Every layer keeps the scale ``s = α/r`` of the configured rank, as PEFT's
``adjust_scaling_factors`` does.

Deviations: the paper and PEFT run an incremental PCA over batches until the components converge
(cosine similarity ``τ``); lorakit accumulates the exact covariance over ``init_batches`` batches
and takes its eigenvectors, so there is no ``τ`` and the result does not depend on batch order.
Each component's sign is fixed so that its largest entry is positive. No whitening.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import FACTORS, PAIR, Parts
from ..core.options import Option
from ..core.spec import MethodSpec
from ..errors import LorakitError
from .base import INITS, Init
from .calibration import CALIBRATION_DTYPE, INIT_BATCHES, INPUTS, InputStatistics, layer_data

RHO = Option("eva_rho", float, 2.0, "most components a layer may take, as a multiple of rank (1: no "
             "redistribution)", minimum=1.0)


@INITS.register("eva")
class EVA(Init):
    """``A`` from the leading principal components of each layer's inputs, ``B = 0``; ranks
    redistributed across layers by explained variance."""

    options = (INIT_BATCHES, CALIBRATION_DTYPE, RHO)
    reads: ClassVar[str] = INPUTS
    requires: ClassVar[frozenset[str]] = frozenset({FACTORS, PAIR})
    needs: ClassVar[str] = "sets a per-layer pair and rank from the inputs' principal components"
    summary: ClassVar[str] = "A = leading eigenvectors of the inputs' covariance, B = 0; ranks by explained variance"

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.schedule != "fixed":
            raise LorakitError(f"init 'eva' sets each layer's rank from the data, and schedule {spec.schedule!r} "
                               "changes ranks too; use schedule fixed with eva")
        super().validate(spec, parts)

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``B = 0``, ``A`` the ``rank`` leading principal components of the layer's inputs."""
        components, _ = principal_components(data)
        A = components[:rank].to(weight.dtype)
        return weight.new_zeros(weight.shape[0], rank), A.contiguous()

    @staticmethod
    def ranks(statistics: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, int]:
        """The ``r·L`` components of highest explained variance ratio, each layer offering ``⌊ρ·r⌉``."""
        rank, offered = values["rank"], round(values["rank"] * values["eva_rho"])
        scored = []
        for position, (name, found) in enumerate(statistics.items()):
            _, ratios = principal_components(found)
            scored += [(float(ratio), -position, name) for ratio in ratios[:offered]]
        kept = sorted(scored, reverse=True)[:rank * len(statistics)]
        counts = dict.fromkeys(statistics, 0)
        for _, _, name in kept:
            counts[name] += 1
        return counts


def principal_components(found: InputStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """``(components (k, in), explained variance ratios (k,))`` of a layer's inputs, by decreasing
    variance, each component's largest entry positive (float64)."""
    found = layer_data(found, InputStatistics, "eva")
    values, vectors = torch.linalg.eigh(found.covariance.to(torch.float64))  # one layer at a time
    order = torch.argsort(values, descending=True)
    values, components = values[order].clamp_min(0), vectors[:, order].T
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    return components * signs, values / values.sum().clamp_min(torch.finfo(values.dtype).tiny)
