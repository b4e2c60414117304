"""LoftQ: LoRA-fine-tuning-aware quantization (Li et al. 2023, arXiv 2310.08659).

A quantized base ``q(W)`` loses ``W − q(W)``; LoftQ chooses the quantized base ``Q`` and the
pair together so that ``Q + s·B A`` is close to the full-precision ``W``. With ``B₀A₀ = 0`` and
``T`` = ``loftq_iter``, for ``t = 1 … T``:

    Q_t = q(W − s·B_{t−1} A_{t−1}),    s·B_t A_t = SVD_r(W − Q_t)

(``SVD_r``: the best rank-r approximation, split evenly between ``B`` and ``A`` as PiSSA splits
``W``). The adapter starts at ``(B_T, A_T)``, and the base becomes ``Q_T``. With ``T = 1`` the
base is the quantized checkpoint as loaded and the adapter holds the rank-r part of its
quantization error; more iterations move the base too.

``W`` is the checkpoint's weight before quantization: the base must be loaded quantized
(``model.quantize: nf4 | int8``), and lorakit reads ``W`` again from the safetensors files it came
from (``lorakit.source_weights``); ``q`` is the layer's own bitsandbytes format.

Deviations: PEFT replaces the base weights by the dequantized ``Q_T`` and asks the user to save
that base and quantize it again; lorakit keeps the base as it is on disk and saves
``(B_{T−1}, A_{T−1})`` with the adapter, so loading reads ``W`` again and quantizes
``W − s·B_{T−1}A_{T−1}`` to the same bits. Exact SVDs. The quantization and dequantization run
where the base is (bitsandbytes' CPU or GPU kernels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import FACTORS
from ..core.options import Option
from .base import INITS, Init
from .calibration import WEIGHTS, FullPrecision, layer_data
from .pissa import svd_factors

ITERATIONS = Option("loftq_iter", int, 1, "alternations of quantizing W − s·B A and fitting B A to W − Q (T)",
                    minimum=1)


@INITS.register("loftq")
class LoftQ(Init):
    """The pair and the quantized base fitted together to the checkpoint's full-precision ``W``."""

    options = (ITERATIONS,)
    rewrites_base: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({FACTORS})
    reads: ClassVar[str] = WEIGHTS
    quantized_only: ClassVar[bool] = True
    needs: ClassVar[str] = "sets a per-layer pair fitted to the quantization error of W"
    summary: ClassVar[str] = "Q_t = q(W − s·B_{t−1}A_{t−1}), s·B_t A_t = SVD_r(W − Q_t), t = 1…T; base ← Q_T"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B_T, A_T)``; ``data.residual`` becomes ``(B_{T−1}, A_{T−1})``, the pair quantized into the base."""
        source = layer_data(data, FullPrecision, "loftq")
        W = source.weight
        previous = (W.new_zeros(W.shape[0], 0), W.new_zeros(0, W.shape[1]))  # B₀A₀ = 0, as a rank-0 pair
        B, A = previous
        for _ in range(values["loftq_iter"]):
            previous = (B, A)
            Q = source.quantize(W - scale * (B @ A))
            B, A = svd_factors(W - Q, rank, scale, None, None)
        source.residual = previous
        return B, A
