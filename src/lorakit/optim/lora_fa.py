"""LoRA-FA: LoRA with ``A`` frozen after its init (Zhang et al. 2023, arXiv 2308.03303).

Only ``B`` (and vector parameters such as DoRA's magnitude) train, with AdamW. The saving is
activation memory: with ``A`` frozen, backward needs ``A x`` (``r`` numbers per token) for
``B``'s gradient and ``A`` itself for the input gradient, never the layer input ``x``; autograd
then keeps only ``A x`` (measured in ``benchmarks/forms_speed.py``). Adapter dropout adds its
mask back, so use dropout 0 for the full saving.

``lora_fa_projected=True`` is PEFT's variant (``create_lorafa_optimizer``): before each step
``∇B ← ∇B (A Aᵀ + δI)⁺ / s²`` (``δ = 1e-8``), the gradient of the full LoRA update projected onto
what ``B`` alone can express. The default is the paper's plain LoRA-FA.
"""

from __future__ import annotations

from typing import Any

import torch

from . import RECIPES
from .adamw import AdamW

PROJECTION_DELTA = 1e-8


@torch.no_grad()
def gram_pseudo_inverse(A: torch.Tensor) -> torch.Tensor:
    """``(A Aᵀ + δI)⁺`` in float32; ``A`` is frozen, so the recipe computes it once per layer."""
    A32 = A.to(torch.float32)
    return torch.linalg.pinv(A32 @ A32.T + PROJECTION_DELTA * torch.eye(A.shape[0], device=A.device))


@torch.no_grad()
def project_gradient(B: torch.nn.Parameter, gram_inverse: torch.Tensor, scale: float) -> None:
    """``∇B ← ∇B (A Aᵀ + δI)⁺ / s²`` in place."""
    if B.grad is not None:
        B.grad.copy_((B.grad.to(torch.float32) @ gram_inverse / scale**2).to(B.grad.dtype))


class LoraFA(AdamW):
    """AdamW over every trainable parameter but ``A``, which stays at its init."""

    fixed_pair = "freezes A and trains only B of each layer's pair B A"

    def prepare(self, adapter: Any) -> None:
        for form in adapter.forms():
            form.roles()["A"].requires_grad_(False)

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        if not adapter.spec.lora_fa_projected:
            return
        forms = adapter.forms()
        inverses: dict[int, tuple[int, torch.Tensor]] = {}  # id(form) → (A's version, inverse)

        def project(*_: Any) -> None:
            for form in forms:
                cached = inverses.get(id(form))
                if cached is None or cached[0] != form.A._version:  # recomputed only if A was changed
                    cached = inverses[id(form)] = (form.A._version, gram_pseudo_inverse(form.A))
                project_gradient(form.B, cached[1], form.scale)

        optimizer.register_step_pre_hook(project)


RECIPES.register("lora_fa")(LoraFA())
