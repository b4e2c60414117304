"""LoRA: ``y = W x + b + s · B (A dropout(x))``.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685.
``A`` has shape ``(r, in)``, ``B`` shape ``(out, r)``, scale ``s = α / r`` (``α / √r`` with
rsLoRA, Kalajdzievski 2023, arXiv 2312.03732). The training path applies the two thin matrices
to the activations and never forms the dense ``ΔW = s · B A``.

``PairForm`` is the pair itself (shared with DoRA and AdaLoRA's SVD form); ``LowRank``, the
``lora`` form, adds what rank schedules use: a trainable gate ``ω`` and resizing.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.component import ADDITIVE, FACTORS, GATED, PAIR, RANK_WITHIN_SHAPE, RESIZABLE, SHARED_INPUT
from ..core.options import Option
from ..core.spec import MethodSpec
from ..ops.resize import resize_pair
from .base import DROPOUT, FORMS, RANK, Form

# With half-precision activations (a bf16/fp16 model) the float32 factors are cast down, not the
# activations up: the cast costs r·(in+out) numbers instead of tokens·in, gradients still reach
# the float32 factors, and the matmuls run on the half-precision units (as under autocast).
HALF_DTYPES = (torch.bfloat16, torch.float16)

ALPHA = Option("alpha", float, 16.0, "scale numerator: s = α/r (α/√r with rslora)", minimum=0.0,
               open_minimum=True, requirement="a finite number > 0", null_is_default=False)
RSLORA = Option("rslora", bool, False, "rank-stabilised scale s = α/√r (Kalajdzievski 2023)", null_is_default=False)


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    """``s = α / r``, or ``α / √r`` with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def compute_dtype(x: torch.Tensor, factor: torch.Tensor) -> torch.dtype:
    """The dtype of the adapter's matmuls: the activations' when that is a half type, else the factors'."""
    return x.dtype if x.dtype in HALF_DTYPES else factor.dtype


def add_low_rank(y: torch.Tensor, inner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``y + inner · weightᵀ`` for 2-D ``y`` (tokens × out): one matmul-accumulate into ``y`` when the
    dtypes agree — ``y`` is a base layer's fresh output, which no backward reads — so the update
    costs no ``tokens × out`` temporaries; out of place otherwise."""
    if y.dtype == inner.dtype and y.is_contiguous():
        return y.addmm_(inner, weight.t())
    return y + F.linear(inner, weight).to(y.dtype)


def initial_scale(spec: MethodSpec) -> float:
    """The scale ``s`` a spectral init used for ``W ← W − s·B₀A₀`` (a schedule may later change a
    layer's own scale, never this one)."""
    return lora_scale(spec.alpha, spec.rank, spec.rslora)


class PairForm(Form):
    """A low-rank pair ``B A`` with scale ``s`` and input dropout."""

    capabilities: ClassVar[frozenset[str]] = frozenset({FACTORS, PAIR, ADDITIVE, RANK_WITHIN_SHAPE, SHARED_INPUT})
    options: ClassVar[tuple[Option, ...]] = (RANK, ALPHA, DROPOUT, RSLORA)

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float,
        rslora: bool = False, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.rank = rank
        self.scale = lora_scale(alpha, rank, rslora)
        self.A = nn.Parameter(torch.zeros(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def build(cls, in_features: int, out_features: int, spec: MethodSpec, shared: Any) -> PairForm:
        return cls(in_features, out_features, spec.rank, spec.alpha, rslora=spec.rslora, dropout=spec.dropout)

    def diagonal(self) -> torch.Tensor | None:
        """The weight applied between ``A`` and ``B`` (a gate, AdaLoRA's ``λ ⊙ mask``); ``None``
        for a plain pair."""
        return None

    def input_side(self, x: torch.Tensor) -> torch.Tensor:
        """``A dropout(x)``, in ``compute_dtype``."""
        h = self.dropout(x)
        dtype = compute_dtype(h, self.A)
        return F.linear(h.to(dtype), self.A.to(dtype))

    def output_side(self, dtype: torch.dtype) -> torch.Tensor:
        """``s · B diag(d)`` in ``dtype``: the scale and a diagonal ``d`` folded into the ``out × r``
        weight, never applied to the ``tokens × out`` output."""
        diagonal = self.diagonal()
        B = self.B if diagonal is None else self.B * diagonal
        return (self.scale * B).to(dtype)

    def low_rank(self, x: torch.Tensor, inner: torch.Tensor | None = None) -> torch.Tensor:
        """``s · B diag(d) A dropout(x)``; ``inner``: ``A x`` already computed (``lorakit.fused``)."""
        inner = self.input_side(x) if inner is None else inner
        return F.linear(inner, self.output_side(inner.dtype))

    def forward(self, x: torch.Tensor, base: nn.Linear, inner: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # 2-D, so that the update adds into the base output in place
        inner = self.input_side(rows) if inner is None else inner.reshape(-1, inner.shape[-1])
        y = add_low_rank(base(rows), inner, self.output_side(inner.dtype))
        return y.view(*x.shape[:-1], y.shape[-1])

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s · B diag(d), A)``."""
        return self.output_side(self.B.dtype), self.A

    def roles(self) -> dict[str, nn.Parameter]:
        return {"A": self.A, "B": self.B}

    def set_rank(self, rank: int) -> None:
        """Replace ``A``, ``B`` by zero tensors of rank ``rank`` (same device, dtype, trainability)."""
        trainable = self.A.requires_grad, self.B.requires_grad
        self.A = nn.Parameter(self.A.new_zeros(rank, self.A.shape[1]), requires_grad=trainable[0])
        self.B = nn.Parameter(self.B.new_zeros(self.B.shape[0], rank), requires_grad=trainable[1])
        self.rank = rank

    @torch.no_grad()
    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:
        """Set the low-rank factors (used by inits and by loading)."""
        self.A.copy_(A)
        self.B.copy_(B)


@FORMS.register("lora")
class LowRank(PairForm):
    """The LoRA pair, which rank schedules may gate and resize."""

    capabilities: ClassVar[frozenset[str]] = PairForm.capabilities | {GATED, RESIZABLE}
    summary: ClassVar[str] = "y = W x + s·B A x"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_parameter("gate", None)  # ω of WeightLoRA / SimplexLoRA, when a schedule adds one

    def diagonal(self) -> torch.Tensor | None:
        """A schedule's gate ``ω`` (a scalar: ``ω·s·B(A x) = s·B(ω·A x)`` scales r numbers per
        token, not out), or ``None``."""
        return self.gate

    def roles(self) -> dict[str, nn.Parameter]:
        roles = super().roles()
        return roles if self.gate is None else {**roles, "gate": self.gate}

    def set_gate(self, value: float | None) -> None:
        """Add a trainable scalar gate ``ω`` (``y = W x + ω·s·B A x``), or remove it (``None``)."""
        self.gate = None if value is None else nn.Parameter(torch.tensor(float(value), device=self.A.device))

    @torch.no_grad()
    def fold_gate(self) -> None:
        """``s ← ω·s`` and drop the gate: the same ``ΔW``, plain LoRA from here on."""
        if self.gate is not None:
            self.scale *= float(self.gate)
            self.gate = None

    def resize(self, rank: int, generator: torch.Generator | None = None) -> None:
        """Grow (same ``B A``) or shrink (best rank-``rank`` approximation) to ``rank ≥ 1``."""
        B, A = resize_pair(self.B.detach(), self.A.detach(), rank, generator)
        dtype = self.A.dtype
        self.set_rank(rank)
        self.set_factors(B.to(dtype), A.to(dtype))
