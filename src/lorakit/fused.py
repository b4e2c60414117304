"""Fused adapter inputs: one ``A`` matmul for the adapted layers that read the same input.

In a Llama block ``q_proj``, ``k_proj`` and ``v_proj`` are called on the same normed hidden states
``x``, and so are ``gate_proj`` and ``up_proj``. Their adapters' input sides ``A_q x``, ``A_k x``,
``A_v x`` are the row blocks of one product ``[A_q; A_k; A_v] x``: one matmul with ``Σr`` output
features instead of three with ``r`` each, and in backward one matmul for ``∂x`` and one for the
stacked ``∂A`` instead of three each. The stack is rebuilt from the layers' current factors at
every forward (``Σr × in`` numbers, against ``tokens × Σr × in`` multiply-adds for the product), so
optimizers, schedules that resize or mask ranks, and checkpoints see each layer's own ``A``; the
gradient of the stack splits back onto them.

Which layers: siblings (children of one module) whose names are one of ``SIBLINGS``, of one
input width, all adapted with a form that declares ``shared_input`` (the LoRA pair, DoRA,
AdaLoRA's triplets) and no dropout (each layer draws its own dropout mask, so their inputs
differ). The maths is the same as each layer's own ``A x`` (float rounding of a larger matmul
aside): a layer takes its block of the shared product only when it is called with the very tensor
the product was computed from (the same object, unmodified since); otherwise (a model that calls
them on different inputs, an in-place change) the group's product is computed anew from the
layer's input. Under ``torch.inference_mode`` (whose tensors keep no version) each layer computes
its own.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from .core.component import SHARED_INPUT
from .forms.lora import compute_dtype

# children of one module that transformers models call on one input
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"), ("w1", "w3"))


class SharedInput:
    """The input side ``A x`` of several adapted layers (``lorakit.layer.AdaptedLinear``) computed
    as one product (module docstring)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self._source: tuple[torch.Tensor, int] | None = None  # (x, x._version) of the pending blocks
        self._blocks: dict[int, torch.Tensor] = {}  # id(layer) → its block, until that layer takes it

    def input_side(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``A x`` of ``layer`` (in the dtype its form computes in): its block of the shared product
        if that was computed from ``x``, else a fresh shared product of which it takes its block."""
        if x.is_inference():  # no version counter to prove the input unchanged
            return layer.form.input_side(x)
        source = self._source
        if source is not None and source[0] is x and source[1] == x._version and id(layer) in self._blocks:
            block = self._blocks.pop(id(layer))
            if not self._blocks:
                self._source = None  # every block taken: hold on to nothing
            return block
        dtype = compute_dtype(x, layer.form.A)
        stacked = torch.cat([member.form.A.to(dtype) for member in self.layers])
        blocks = F.linear(x.to(dtype), stacked).split([member.form.A.shape[0] for member in self.layers], dim=-1)
        self._blocks = {id(m): b for m, b in zip(self.layers, blocks) if m is not layer and m.enabled}
        self._source = (x, x._version) if self._blocks else None
        return blocks[self.layers.index(layer)]

    def drop(self, layer: nn.Module) -> None:
        """Take ``layer`` out of the group (its adapter was removed); a group of one dissolves."""
        self.layers.remove(layer)
        layer.shared_input = None
        self._source, self._blocks = None, {}
        if len(self.layers) == 1:
            self.drop(self.layers[0])


def fuse_shared_inputs(layers: dict[str, nn.Module], dropout: float) -> int:
    """Group the sibling ``layers`` (by name) that read one input into ``SharedInput`` groups;
    returns the number of groups (0 with dropout, whose masks differ per layer)."""
    if dropout > 0:
        return 0
    by_parent: dict[tuple[str, tuple[str, ...], int], list[nn.Module]] = defaultdict(list)
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        family = next((names for names in SIBLINGS if child in names), None)
        if family is not None and SHARED_INPUT in layer.form.capabilities and layer.shared_input is None:
            by_parent[(parent, family, layer.in_features)].append(layer)
    groups = [members for members in by_parent.values() if len(members) > 1]
    for members in groups:
        group = SharedInput(members)
        for layer in members:
            layer.shared_input = group
    return len(groups)
