"""Low-rank terms ``c · B A`` and their in-place addition to a weight.

Spectral inits take ``s·B₀A₀`` out of ``W``, Delta-LoRA moves ``W`` by ``±λ·s·B A``, removing a
layer puts ``s·B₀A₀`` back, and the PEFT export writes a layer's change as a sum of such terms.
"""

from __future__ import annotations

import torch

Term = tuple[torch.Tensor, torch.Tensor, float]  # (B (out, r), A (r, in), c): the matrix c·B A


@torch.no_grad()
def add_products(weight: torch.Tensor, terms: list[Term]) -> None:
    """``W ← W + Σ c·B A`` in place, in float32, rounded once to ``W``'s dtype.

    Fused ``addmm`` calls (no ``(out, in)`` temporaries for a float32 weight).
    """
    work = weight if weight.dtype == torch.float32 else weight.to(torch.float32)
    for B, A, coefficient in terms:
        work.addmm_(B.to(work.device, torch.float32), A.to(work.device, torch.float32), alpha=coefficient)
    if work is not weight:
        weight.copy_(work.to(weight.dtype))


def subtract_product(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float) -> None:
    """``W ← W − s·B A``: ``add_products`` with ``−s``, the arithmetic a spectral init's attach and
    loading use (``lorakit.quantized.add_to_base``), so the residual is bit-for-bit the same."""
    add_products(weight, [(B, A, -scale)])

