"""GPT-2's ``Conv1D`` (transformers): ``y = x W + b`` with ``W`` stored ``(in, out)`` — a linear layer
whose weight is transposed.

lorakit adapts it through ``Conv1DView``, an ``nn.Linear``-shaped view of it: ``weight`` is
``Wᵀ`` ``(out, in)``, a view, so that inits, DoRA's norm, Delta-LoRA's updates and merging read and
write the Conv1D's own weight; ``in_features``/``out_features`` as for a linear layer; the forward
is the Conv1D's own. Saved adapters and fingerprints see the layer as the linear layer it is, the
Conv1D itself goes back into the model when the adapter is merged or a schedule removes it, and the
PEFT export marks such layers ``fan_in_fan_out``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["Conv1D", "Conv1DView", "unwrapped"]


class Conv1DView(nn.Module):
    """A ``Conv1D`` seen as an ``nn.Linear`` (see the module docstring)."""

    def __init__(self, conv: Conv1D) -> None:
        super().__init__()
        self.conv = conv
        self.in_features, self.out_features = conv.weight.shape
        self.train(conv.training)  # a new module starts in training mode; the view follows the layer

    @property
    def weight(self) -> torch.Tensor:
        """``Wᵀ``, ``(out, in)``: a view of the Conv1D's weight."""
        return self.conv.weight.T

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def unwrapped(layer: nn.Module) -> nn.Module:
    """The module that belongs in the model: the Conv1D of a view, else the layer itself."""
    return layer.conv if isinstance(layer, Conv1DView) else layer
