"""AdaLoRA's SVD form: ``ΔW = s · P diag(λ ⊙ mask) Q``.

Zhang et al., "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
arXiv 2303.10512, Eq. (3). ``P`` has shape ``(out, r)``, ``λ`` shape ``(r,)``, ``Q`` shape
``(r, in)``; the scale is LoRA's ``s = α / r`` (``α / √r`` with rsLoRA). The training path never
forms the dense ``ΔW``: ``y = W x + b + s · P ((λ ⊙ mask) ⊙ (Q dropout(x)))``.

``P`` and ``Q`` are ``PairForm``'s output and input factors (stored as its ``B`` and ``A``, so the
half-precision rule, dropout, scale and ``delta_weight`` are shared through ``PairForm.diagonal``);
``λ`` is the parameter ``lam`` (``lambda`` is a Python keyword). A triplet ``k`` is
``(P_{:,k}, λ_k, Q_{k,:})``. The ``gaussian`` init draws
``P``, ``Q`` from ``N(0, 0.02²)`` and ``set_factors`` sets ``λ = 0``, so ``ΔW = 0`` at attach.

``mask`` (a persistent bool buffer, all ``True`` at first) is set by the ``adalora`` rank
schedule; the layer's rank is ``mask.sum()``, saved with the adapter and restored on load.
Deviation from the paper, which prunes by zeroing ``λ_k`` only: the forward pass multiplies
``λ`` by the mask, so a pruned triplet gets no task gradient and the optimizer's momentum cannot
bring it back between reallocations (the schedule also keeps a masked ``λ_k`` at 0).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..core.component import ADDITIVE, FACTORS, GATED, MASKED, RANK_WITHIN_SHAPE, RESIZABLE, SHARED_INPUT, Parts
from ..core.spec import MethodSpec
from ..errors import LorakitError
from .base import FORMS
from .lora import PairForm


@FORMS.register("svd")
class SVD(PairForm):
    """``P diag(λ ⊙ mask) Q`` with scale ``s`` and input dropout (roles: ``A`` = ``Q``,
    ``B`` = ``P``, ``other`` = ``λ``)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({FACTORS, ADDITIVE, MASKED, RANK_WITHIN_SHAPE, SHARED_INPUT})
    summary: ClassVar[str] = "AdaLoRA's triplets: ΔW = s·P diag(λ ⊙ mask) Q"

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.init != "gaussian":
            raise LorakitError(f"AdaLoRA's SVD form starts from λ = 0 with Gaussian P, Q; init {spec.init!r} does "
                               "not apply (use init='gaussian')")
        if parts.schedule.requires & {GATED, RESIZABLE}:
            raise LorakitError(f"form 'svd' is pruned by its mask, not resized; schedule {spec.schedule!r} is not "
                               "supported (use schedule='adalora' or 'fixed')")

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float,
        rslora: bool = False, dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, out_features, rank, alpha, rslora=rslora, dropout=dropout)
        self.lam = nn.Parameter(torch.zeros(rank))
        self.register_buffer("mask", torch.ones(rank, dtype=torch.bool))

    @property
    def P(self) -> nn.Parameter:
        """The left singular vectors ``P`` (``out × r``)."""
        return self.B

    @property
    def Q(self) -> nn.Parameter:
        """The right singular vectors ``Q`` (``r × in``)."""
        return self.A

    def diagonal(self) -> torch.Tensor:
        """``λ ⊙ mask``: the kept singular values."""
        return self.lam * self.mask

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s · P diag(λ), Q)`` over the kept triplets only."""
        B, A = super().factors()
        return B[:, self.mask], A[self.mask]

    def kept_rank(self) -> int:
        """The number of triplets the mask keeps (the layer's effective rank)."""
        return int(self.mask.sum())

    def roles(self) -> dict[str, nn.Parameter]:
        return {"A": self.A, "B": self.B, "other": self.lam}

    @torch.no_grad()
    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:
        """``P ← B``, ``Q ← A``, ``λ ← 0`` (the mask is left as it is)."""
        super().set_factors(B, A)
        self.lam.zero_()

    def set_rank(self, rank: int) -> None:
        """Zero ``P``, ``λ``, ``Q`` of rank ``rank``, every triplet kept."""
        super().set_rank(rank)
        self.lam = nn.Parameter(self.lam.new_zeros(rank), requires_grad=self.lam.requires_grad)
        self.mask = torch.ones(rank, dtype=torch.bool, device=self.mask.device)
