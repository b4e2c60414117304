"""OLoRA: orthonormal initialisation by QR (Büyükakyüz 2024, arXiv 2406.01775; seed 001).

``Q, R = qr(W)``; ``B = Q[:, :r]``, ``A = R[:r, :]``; ``W ← W − s·B A``.

The first ``r`` columns of ``Q`` depend only on the first ``r`` columns of ``W``, so lorakit
computes the thin QR ``Q_r, R_rr = qr(W[:, :r])`` and ``A = [R_rr, Q_rᵀ W[:, r:]]``: the same
factors as the full QR (same Householder signs, ``R_rr`` exactly upper triangular) in
``O(out·in·r)`` instead of ``O(out·in·min(out, in))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .base import INITS, SpectralInit


@INITS.register("olora")
class OLoRA(SpectralInit):
    """Orthonormal ``B`` from the QR of ``W``; ``s·B A`` moved out of ``W``."""

    needs: ClassVar[str] = "sets a per-layer pair from the QR of W"
    summary: ClassVar[str] = "B = Q_r, A = Q_rᵀ W from the thin QR of W; W ← W − s·B A"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``B = Q_r`` (orthonormal columns), ``A = Q_rᵀ W`` from the thin QR of ``W[:, :r]``."""
        Q_r, R_rr = torch.linalg.qr(weight[:, :rank])
        A = torch.cat([R_rr, Q_r.T @ weight[:, rank:]], dim=1)
        return Q_r.contiguous(), A.contiguous()
