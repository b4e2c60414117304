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

from typing import ClassVar

import torch

from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from .adamw import AdamW
from .base import OPTIMIZERS

PROJECTION_DELTA = 1e-8
PROJECTED = Option("lora_fa_projected", bool, False,
                   "project B's gradient onto what B alone can express (PEFT's create_lorafa_optimizer)",
                   null_is_default=False)


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


@OPTIMIZERS.register("lora_fa")
class LoraFA(AdamW):
    """AdamW over every trainable parameter but ``A``, which stays at its init."""

    acts_at_steps: ClassVar[bool] = True

    options = (PROJECTED,)
    fixed_pair: ClassVar[str | None] = "freezes A and trains only B of each layer's pair B A"
    summary: ClassVar[str] = "A frozen at its init; only B trains"

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self._inverses: dict[int, tuple[int, torch.Tensor]] = {}  # id(form) → (A's version, (A Aᵀ + δI)⁺)

    def prepare(self, adapter: AdapterView) -> None:
        for form in adapter.forms():
            form.roles()["A"].requires_grad_(False)

    def before_step(self, adapter: AdapterView) -> None:
        if not self.spec.lora_fa_projected:
            return
        for form in adapter.forms():
            cached = self._inverses.get(id(form))
            if cached is None or cached[0] != form.A._version:  # recomputed only if A was changed
                cached = self._inverses[id(form)] = (form.A._version, gram_pseudo_inverse(form.A))
            project_gradient(form.B, cached[1], form.scale)
