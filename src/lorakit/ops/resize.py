"""Resizing a low-rank pair ``ΔW ∝ B A`` (seed 003: WeightLoRA+, SimplexLoRA).

Grow ``r_old → r``: ``B_old = Q_B R_B`` (thin QR of the tall factor); ``B = [Q_B, N]`` with ``N``
orthonormal and orthogonal to ``Q_B`` (a random ``(out, r − r_old)`` block projected off ``Q_B``
and orthonormalised); ``A = [R_B A_old; 0]``. Then ``B A = B_old A_old`` exactly (to float
rounding), and the new directions receive gradient: ``∂L/∂A_new = Nᵀ ∂L/∂(BA)`` is non-zero.

Shrink ``r_old → r``: ``B_old = Q_B R_B``, ``A_oldᵀ = Q_A R_A``, ``U Σ Vᵀ = svd(R_B R_Aᵀ)`` (an
``r_old × r_old`` matrix, never a large SVD); ``B = Q_B U_r Σ_r^{1/2}``, ``A = Σ_r^{1/2} V_rᵀ Q_Aᵀ``.
This is the best rank-``r`` approximation of ``B_old A_old`` in Frobenius norm (Eckart–Young).
``compact`` uses the same decomposition to drop the directions a product does not need (its
numerical rank), e.g. when several low-rank terms are concatenated for an export.

Both run in float32 and return float32 factors; a rank of 0 is the caller's business (the
adapter is removed, see ``resize_pair``).
"""

from __future__ import annotations

import torch


def grow(B: torch.Tensor, A: torch.Tensor, rank: int, generator: torch.Generator | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` of rank ``rank ≥ r_old`` with the same product ``B A``."""
    out_features, r_old = B.shape
    if rank < r_old:
        raise ValueError(f"grow: rank {rank} < current rank {r_old}; use shrink")
    if rank > min(out_features, A.shape[1]):
        raise ValueError(f"grow: rank {rank} exceeds min(out, in) = {min(out_features, A.shape[1])}")
    B32, A32 = B.to(torch.float32), A.to(torch.float32)
    Q_B, R_B = torch.linalg.qr(B32)
    noise = torch.randn(out_features, rank - r_old, generator=generator, device=B.device)
    noise -= Q_B @ (Q_B.T @ noise)
    N, _ = torch.linalg.qr(noise)
    N -= Q_B @ (Q_B.T @ N)  # a second pass keeps N orthogonal to Q_B in float32
    N, _ = torch.linalg.qr(N)
    new_B = torch.cat([Q_B, N], dim=1)
    new_A = torch.cat([R_B @ A32, A32.new_zeros(rank - r_old, A.shape[1])], dim=0)
    return new_B, new_A


def _product_svd(B: torch.Tensor, A: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B A = Q_B U diag(S) Vh Q_Aᵀ`` from thin QRs of both factors and the SVD of the small
    ``R_B R_Aᵀ``, all in float32; returns ``(Q_B, U, S, Vh, Q_A)``."""
    Q_B, R_B = torch.linalg.qr(B.to(torch.float32))
    Q_A, R_A = torch.linalg.qr(A.to(torch.float32).T)
    U, S, Vh = torch.linalg.svd(R_B @ R_A.T)
    return Q_B, U, S, Vh, Q_A


def _split_root(Q_B: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, Q_A: torch.Tensor,
                rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``B = Q_B U_r Σ_r^{1/2}``, ``A = Σ_r^{1/2} V_rᵀ Q_Aᵀ``."""
    root = S[:rank].sqrt()
    return Q_B @ (U[:, :rank] * root), (root.unsqueeze(1) * Vh[:rank]) @ Q_A.T


def shrink(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` of rank ``rank ≤ r_old`` whose product is the best rank-``rank`` approximation."""
    r_old = B.shape[1]
    if not 0 < rank <= r_old:
        raise ValueError(f"shrink: rank must be in [1, {r_old}], got {rank}")
    return _split_root(*_product_svd(B, A), rank)


def compact(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` at the numerical rank of ``B A`` (singular values above
    ``σ_max · max(out, in) · ε_float32``, at least 1): the same product to float rounding, with
    no redundant directions (e.g. ``[B, B₀]`` with ``B₀ = B`` collapses to rank ``r``)."""
    Q_B, U, S, Vh, Q_A = _product_svd(B, A)
    tolerance = S.max() * max(B.shape[0], A.shape[1]) * torch.finfo(torch.float32).eps
    rank = max(1, int((S > tolerance).sum()))
    return _split_root(Q_B, U, S, Vh, Q_A, rank)


def resize_pair(B: torch.Tensor, A: torch.Tensor, rank: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Grow or shrink ``(B, A)`` to ``rank``; ``None`` for rank 0 (the adapter goes away)."""
    if rank == 0:
        return None
    if rank >= B.shape[1]:
        return grow(B, A, rank, generator)
    return shrink(B, A, rank)
