"""The interface of an optimizer recipe."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..methods import MethodSpec


def params_by_role(forms: Iterable[nn.Module]) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of ``forms`` grouped by their role (``A``, ``B``, ``other``, ``gate``).

    Gates (the ``ω`` of WeightLoRA / SimplexLoRA) get their own group from the ``Adapter``;
    recipes leave them out."""
    groups: dict[str, list[nn.Parameter]] = {"A": [], "B": [], "other": [], "gate": []}
    for form in forms:
        for role, param in form.roles().items():
            if param.requires_grad:
                groups[role if role in groups else "other"].append(param)
    return groups


class Recipe:
    """Builds the optimizer's parameter groups; may freeze parameters, register step hooks on
    the optimizer, and keep per-adapter state (saved with the adapter).

    ``changes_base``: the recipe updates the frozen base weights during training (Delta-LoRA);
    checkpoints then also hold the exact base weights of the adapted layers. ``fixed_pair``: what
    the recipe does with every layer's own low-rank pair ``B A`` that needs it kept at its
    attached rank (``None``: any form and schedule); ``validate`` refuses the forms and schedules
    that do not keep it.
    """

    changes_base = False
    fixed_pair: str | None = None
    base_update_note: str | None = None  # recorded in the saved adapter's JSON when set

    def check_targets(self, spec: Any, targets: list[tuple[str, nn.Linear]]) -> None:
        """Refuse ``spec`` for these target layers, before anything is attached (nothing by default)."""

    def prepare(self, adapter: Any) -> None:
        """Called once at attach/load, after the adapter's parameters are set trainable."""

    def on_load(self, adapter: Any) -> None:
        """Called after a saved adapter's tensors (``adapter.method_state`` included) are loaded."""

    def base_update_terms(self, adapter: Any, name: str) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """``[(B, A, c), ...]`` with ``W_now = W_original + Σ c·B A`` for layer ``name``: how far
        training moved its base weight (empty unless ``changes_base``)."""
        return []

    def param_groups(
        self, forms: list[nn.Module], spec: "MethodSpec", lr: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        """Register per-step hooks on ``optimizer`` (none by default)."""
