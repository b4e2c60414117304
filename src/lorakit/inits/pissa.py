"""PiSSA: principal singular values and vectors (Meng et al. 2024, arXiv 2404.02948).

``U, S, Vᵀ = svd(W)``; ``B = U_r √(S_r / s)``, ``A = √(S_r / s) V_rᵀ``; ``W ← W − s·B A``, so
``s·B A`` is the best rank-r approximation of ``W`` and the residual stays frozen.
Option ``pissa_niter``: ``None`` for the exact SVD, an integer for the randomised low-rank
SVD (``torch.svd_lowrank`` with that many subspace iterations), seeded from the adapter seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.options import Option
from .base import INITS, SpectralInit

NITER = Option("pissa_niter", int, None, "subspace iterations of a randomised SVD (null: the exact SVD)",
               minimum=0, default_text="null (exact SVD)")


@INITS.register("pissa")
class PiSSA(SpectralInit):
    """The principal singular triplets of ``W`` as the pair; ``s·B A`` moved out of ``W``."""

    options = (*SpectralInit.options, NITER)
    needs: ClassVar[str] = "sets a per-layer pair from the SVD of W"
    summary: ClassVar[str] = "B = U_r √(S_r/s), A = √(S_r/s) V_rᵀ; W ← W − s·B A"

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``B = U_r √(S_r/s)``, ``A = √(S_r/s) V_rᵀ`` from an exact or randomised SVD of ``W``."""
        return svd_factors(weight, rank, scale, generator, values.get("pissa_niter"))


def svd_factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator | None,
                niter: int | None, minor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``B = U_r √(S_r/s)``, ``A = √(S_r/s) V_rᵀ`` over the ``rank`` largest singular triplets of
    ``weight`` (``minor``: the smallest; exact SVD only), from an exact SVD or, with ``niter``, a
    randomised one seeded from ``generator``."""
    if niter is None:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        kept = slice(S.shape[0] - rank, None) if minor else slice(None, rank)
        U_r, S_r, Vh_r = U[:, kept], S[kept], Vh[kept]
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[weight.device] if weight.is_cuda else []):
            torch.manual_seed(seed)
            U_r, S_r, V_r = torch.svd_lowrank(weight, q=rank, niter=int(niter))
        Vh_r = V_r.T
    return split_pair(U_r, S_r, Vh_r, scale)


def split_pair(U_r: torch.Tensor, S_r: torch.Tensor, Vh_r: torch.Tensor,
               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``B = U_r √(S_r/s)``, ``A = √(S_r/s) Vh_r``: ``s·B A = U_r diag(S_r) Vh_r``, split evenly."""
    root = torch.sqrt(S_r / scale)
    return (U_r * root).contiguous(), (root[:, None] * Vh_r).contiguous()
