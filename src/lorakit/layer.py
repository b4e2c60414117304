"""The one layer type lorakit inserts: a frozen ``nn.Linear`` plus an adapter form.

``print(model)`` shows ``AdaptedLinear(base_layer=Linear(...), form=LowRank(...))`` where a
layer was adapted. The base layer is kept inside so that merging and unloading give back a
plain ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv1d import unwrapped
from .core.terms import Term, add_products
from .forms import Form
from .forms.lora import add_low_rank, compute_dtype
from .fused import SharedInput
from .quantized import base_weight, is_quantized, plain_layer


class AdaptedLinear(nn.Module):
    """``y = form(x, base_layer)``: the frozen base layer with its adapter."""

    def __init__(self, base_layer: nn.Linear, form: Form) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.form = form
        self.enabled = True
        # with the adapter off, terms added to the base output: ``Σ c·B (A x)`` (``Adapter.original``)
        self.corrections: list[Term] = []
        # with the adapter on, frozen terms added to the output: a spectral init's ``−s·B₀(A₀ x)`` on a
        # quantized base kept as it is (``spectral_residual: correction``)
        self.paths: list[Term] = []
        # siblings reading the same input compute their ``A x`` together (``lorakit.fused``)
        self.shared_input: SharedInput | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, for code that inspects ``module.weight`` (dtype, device)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base bias, for code that reads ``module.bias`` (some architectures do)."""
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:  # the base on 2-D rows, as the forms compute it (bit for bit the same W x)
            return _plus_terms(self.base_layer(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1), x,
                               self.corrections)
        if self.shared_input is not None:
            return _plus_terms(self.form(x, self.base_layer, inner=self.shared_input.input_side(self, x)), x,
                               self.paths)
        return _plus_terms(self.form(x, self.base_layer), x, self.paths)

    @torch.no_grad()
    def merge(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """Fold ``ΔW`` into the base weight and return the plain base layer; a quantized base is
        dequantized and comes back as an ``nn.Linear`` in ``dtype`` (default float32; never requantized)."""
        base = self.base_layer
        merged = self.form.merged_weight(base_weight(base))
        add_products(merged, self.paths)
        if not is_quantized(base):
            base.weight.copy_(merged.to(base.weight.dtype))
            return unwrapped(base)
        return plain_layer(base, merged, dtype or torch.float32)


def _plus_terms(y: torch.Tensor, x: torch.Tensor, terms: list[Term]) -> torch.Tensor:
    """``y + Σ c·B (A x)``, computed as a pair form computes its own update (``add_low_rank`` with
    ``c`` folded into ``B``, in ``compute_dtype``), so a correction that stands for an adapter's
    initial ``s·B₀A₀`` equals that adapter's output bit for bit (DPO's reference at step 0)."""
    if not terms:
        return y
    rows, out = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    for B, A, coefficient in terms:  # (moved along: the terms are plain tensors, not the module's buffers)
        dtype = compute_dtype(x, A)
        inner = F.linear(rows.to(dtype), A.to(x.device, dtype))
        out = add_low_rank(out, inner, (coefficient * B.to(x.device)).to(inner.dtype))  # (autocast: bf16)
    return out.view(*y.shape[:-1], out.shape[-1])
