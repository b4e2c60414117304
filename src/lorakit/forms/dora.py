"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv 2402.09353).

``W' = m ⊙ (W + s·B A) / n``, ``n = ‖W + s·B A‖_row`` (per output row, over the input dim),
so ``y = (m / n) ⊙ (W x + s·B A dropout(x)) + b``. ``m ∈ R^out`` is trainable and starts at
``n`` computed after the init (``= ‖W_original‖_row`` for every init, spectral ones included,
since those keep ``W + s·B₀A₀ = W_original``). ``n`` is treated as a constant in backward
(detached, paper §4.3), as in PEFT.

The norm is computed without an ``(out, in)`` temporary:
``n_i² = ‖W_i‖² + 2s·(B ⊙ (W Aᵀ))_i·1 + s²·(B (A Aᵀ) ⊙ B)_i·1``; ``‖W_i‖²`` is cached while
``W`` is unchanged, and ``n`` itself until ``W``, ``A`` or ``B`` change: keyed on their version
counters (in-place updates by a torch optimizer, Delta-LoRA or loading) and on a count of the
gradients accumulated into ``A`` and ``B`` (fused optimizers update parameters without bumping
their version counters, but only after a backward pass has produced gradients).
The magnitude has role ``other`` (it joins ``B``'s group under LoRA+).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.component import FACTORS, MAGNITUDE, PAIR, RANK_WITHIN_SHAPE, SHARED_INPUT
from ..quantized import base_weight, is_quantized
from .base import FORMS
from .lora import PairForm, add_low_rank


@FORMS.register("dora")
class DoRA(PairForm):
    """A low-rank pair ``B A`` plus a per-row magnitude ``m``."""

    capabilities: ClassVar[frozenset[str]] = frozenset({FACTORS, PAIR, MAGNITUDE, RANK_WITHIN_SHAPE, SHARED_INPUT})
    summary: ClassVar[str] = "magnitude per output row: W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_row"

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 rslora: bool = False, dropout: float = 0.0) -> None:
        super().__init__(in_features, out_features, rank, alpha, rslora=rslora, dropout=dropout)
        self.magnitude = nn.Parameter(torch.ones(out_features))
        self._weight_sq: torch.Tensor | None = None
        self._weight_key: tuple[int, int, torch.device] | None = None
        self._norm_value: torch.Tensor | None = None
        self._norm_key: tuple[Any, ...] | None = None
        self._gradients = 0  # gradients accumulated into A or B so far
        self._watched: set[int] = set()

    def _count_gradients(self) -> int:
        """How many gradients ``A`` and ``B`` have received (hooks registered on first use)."""
        for param in (self.A, self.B):
            if param.requires_grad and id(param) not in self._watched:
                param.register_post_accumulate_grad_hook(self._gradient_arrived)
                self._watched.add(id(param))
        return self._gradients

    def _gradient_arrived(self, _: torch.Tensor) -> None:
        self._gradients += 1

    def _row_sq(self, weight: torch.Tensor) -> torch.Tensor:
        """``‖W_i‖²`` per row in float32, cached until ``W`` changes in place."""
        key = (weight.data_ptr(), weight._version, weight.device)
        if self._weight_key != key:
            self._weight_sq = torch.linalg.vector_norm(weight, dim=1, dtype=torch.float32).square()
            self._weight_key = key
        return self._weight_sq

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """``n = ‖W + s·B A‖_row`` (float32, detached), without forming ``W + s·B A``:
        ``n² = ‖W_i‖² + s·(B ⊙ (2·W Aᵀ + s·B (A Aᵀ)))_i·1``."""
        A, B, s = self.A.to(torch.float32), self.B.to(torch.float32), self.scale
        WA = (weight @ A.T.to(weight.dtype)).to(torch.float32)  # (out, r)
        M = torch.addmm(WA, B, A @ A.T, beta=2.0, alpha=s)
        return torch.linalg.vecdot(B, M).mul_(s).add_(self._row_sq(weight)).clamp_min_(0).sqrt_()

    def _norm(self, base: nn.Linear) -> torch.Tensor:
        """``weight_norm`` cached until ``W``, ``A`` or ``B`` change (once per optimizer step in
        training, once in all for evaluation and generation); a quantized ``W`` is dequantized."""
        weight = base.weight
        key = (weight.data_ptr(), weight._version, self.A.data_ptr(), self.A._version, self.B.data_ptr(),
               self.B._version, weight.device, self._count_gradients())
        if self._norm_key != key:
            self._norm_value = self.weight_norm(base_weight(base))
            self._norm_key = key
        return self._norm_value

    def forward(self, x: torch.Tensor, base: nn.Linear, inner: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if is_quantized(base):  # the quantized kernel computes W x (+ b, taken off here)
            y = base(rows) if base.bias is None else base(rows) - base.bias
        else:
            y = F.linear(rows, base.weight)
        inner = self.input_side(rows) if inner is None else inner.reshape(-1, inner.shape[-1])
        directional = add_low_rank(y, inner, self.output_side(inner.dtype))
        out = directional * (self.magnitude / self._norm(base)).to(y.dtype)
        out = out if base.bias is None else out + base.bias
        return out.view(*x.shape[:-1], out.shape[-1])

    @torch.no_grad()
    def post_init(self, base: nn.Linear) -> None:
        self.magnitude.copy_(self.weight_norm(base_weight(base)))

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.magnitude / self.weight_norm(weight)).unsqueeze(1) * super().merged_weight(weight)

    def roles(self) -> dict[str, nn.Parameter]:
        return {"A": self.A, "B": self.B, "other": self.magnitude}

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._weight_key = self._norm_key = None
