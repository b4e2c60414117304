"""The narrow view of an attached adapter that components are typed against.

Optimizer recipes and rank schedules act on an adapter through this protocol, never by importing
``lorakit.adapter``: structural changes (removing, resizing, replacing or sharing a layer's form)
go through its methods, which keep the adapter's bookkeeping (what was removed, what is shared)
in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn

from .spec import MethodSpec
from .terms import Term


class LayerView(Protocol):
    """An adapted layer: the frozen ``base_layer`` and its ``form``."""

    base_layer: nn.Linear
    form: Any
    training: bool


class AdapterView(Protocol):
    """What components may read and change of the adapter they belong to."""

    model: nn.Module
    spec: MethodSpec
    layers: Mapping[str, Any]  # name → LayerView
    full_modules: Mapping[str, nn.Module]  # trained in full next to the adapter (train_modules)
    method_state: MutableMapping[str, torch.Tensor]  # saved with the adapter
    spectral: bool  # the init moved s·B₀A₀ out of the base weights

    def forms(self) -> list[Any]:
        """Each distinct form once (layers may share one)."""
        ...

    def delta_terms(self, name: str) -> list[Term]:
        """``[(B, A, c), ...]`` with ``Σ c·B A`` = layer ``name``'s adapted weight minus its original."""
        ...

    def base_changes(self, name: str) -> list[Term]:
        """``[(B, A, c), ...]`` with ``Σ c·B A`` = layer ``name``'s base weight now minus its original."""
        ...

    def quantized_base_terms(self, name: str) -> list[Term] | None:
        """``[(B, A, c), ...]`` with ``Σ c·B A`` = layer ``name``'s adapted weight minus its quantized base,
        where that base is the checkpoint's quantization; else ``None``."""
        ...

    def disabled(self, plus: Mapping[str, list[Term]] | None = None) -> AbstractContextManager[None]:
        """Run the base layers as they are now inside the block (``plus``: more terms per layer)."""
        ...

    def original(self, plus: Mapping[str, list[Term]] | None = None) -> AbstractContextManager[None]:
        """Run the original base model inside the block (``plus``: more terms per layer)."""
        ...

    def remove_layer(self, name: str) -> None:
        """Drop layer ``name``'s adapter; the original base layer goes back into the model."""
        ...

    def resize_layer(self, name: str, rank: int, generator: torch.Generator | None) -> None:
        """Grow or shrink layer ``name``'s pair to ``rank`` (0 removes the layer)."""
        ...

    def fresh_form(self, name: str, key: str) -> Any:
        """A new form for layer ``name``, initialised from the generator of ``(seed, key)``."""
        ...

    def replace_form(self, name: str, form: Any) -> None:
        """Give layer ``name`` the new ``form``."""
        ...

    def share_form(self, name: str, owner: str) -> None:
        """Make layer ``name`` use the form of layer ``owner``."""
        ...
