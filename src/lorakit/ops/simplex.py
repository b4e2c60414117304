"""Euclidean projection onto the probability simplex (SimplexLoRA's ω, seed 003).

``proj(v) = argmin_{ω ≥ 0, Σω = 1} ‖ω − v‖₂``, computed exactly by sorting (Held, Wolfe &
Crowder 1974; Duchi et al. 2008): with ``u`` = ``v`` sorted descending and
``ρ = max{j : u_j − (Σ_{i≤j} u_i − 1)/j > 0}``, ``θ = (Σ_{i≤ρ} u_i − 1)/ρ`` and
``proj(v) = max(v − θ, 0)``. ``O(n log n)``.
"""

from __future__ import annotations

import torch


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of the vector ``v`` onto ``{ω ≥ 0, Σω = 1}``."""
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"project_simplex needs a non-empty vector, got shape {tuple(v.shape)}")
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, dim=0) - 1
    index = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    # the condition holds exactly for j = 1..ρ, so ρ is a count: no host synchronisation on a GPU
    rho = ((u - cumulative / index) > 0).sum().clamp_min(1)
    theta = cumulative.gather(0, (rho - 1).unsqueeze(0)) / rho.to(v.dtype)
    return torch.clamp(v - theta, min=0)
