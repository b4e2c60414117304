"""The interface of an optimizer recipe, and its registry.

A recipe is created per adapter (``OPTIMIZERS.get(name)(spec)``) and owns whatever state its step
hooks need; the ``Adapter`` registers one pre- and one post-step hook on the optimizer and calls
the recipe's ``before_step``/``after_step`` from them, before the schedule's.

``lr_scale`` (an adapter option, for every recipe): the method's learning rate relative to the one
it is given, ``η = lr_scale · lr`` for every group (the gates' explicit ``gate_lr`` aside), so that
``train.lr`` means the same for every preset — LoRA's rate — and a preset whose updates start far
smaller than LoRA's (VeRA's vectors, AdaLoRA's Λ, SimplexLoRA's 1/n gates) sets the factor its
tuned rate showed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from torch import nn

from ..core.component import PAIR, Component, Parts
from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..core.terms import Term
from ..errors import LorakitError
from ..registry import Registry

LR_SCALE = Option("lr_scale", float, 1.0, "the method's learning rate relative to the one given (train.lr): every "
                  "optimizer group runs at lr_scale × lr", minimum=0.0, open_minimum=True,
                  requirement="a finite number > 0", null_is_default=False)


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


class OptimizerRecipe(Component):
    """Builds the optimizer's parameter groups; may freeze parameters, act before and after every
    optimizer step, and keep per-adapter state (saved with the adapter in ``method_state``).

    ``changes_base``: the recipe updates the frozen base weights during training (Delta-LoRA);
    checkpoints then also hold the exact base weights of the adapted layers. ``fixed_pair``: what
    the recipe does with every layer's own pair ``B A`` that needs it kept at its attached rank
    (``None``: any form and schedule); ``validate`` refuses forms without a pair and schedules that
    resize.
    """

    kind: ClassVar[str] = "optimizer"
    changes_base: ClassVar[bool] = False
    fixed_pair: ClassVar[str | None] = None
    base_update_note: ClassVar[str | None] = None  # recorded in the saved adapter's JSON when set

    def __init__(self, spec: MethodSpec) -> None:
        self.spec = spec

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        """Refuse forms and schedules that do not keep each layer's pair, for ``fixed_pair`` recipes."""
        if cls.fixed_pair is None:
            return
        if PAIR not in parts.form.capabilities:
            cls._refuse(spec, f"form {spec.form!r}, which has no trainable pair B A of its own")
        if parts.schedule.resizes:
            cls._refuse(spec, f"schedule {spec.schedule!r}, which resizes, removes or shares adapters")

    @classmethod
    def _refuse(cls, spec: MethodSpec, what: str) -> None:
        raise LorakitError(f"optimizer {spec.optimizer!r} cannot be combined with {what}: {spec.optimizer} "
                           f"{cls.fixed_pair}; use optimizer 'adamw' or 'lora_plus'")

    def check_targets(self, targets: list[tuple[str, nn.Linear]]) -> None:
        """Refuse these target layers for training, before anything is attached (nothing by default)."""

    def prepare(self, adapter: AdapterView) -> None:
        """Called once at attach/load, after the adapter's parameters are set trainable."""

    def on_load(self, adapter: AdapterView) -> None:
        """Called after a saved adapter's tensors (``adapter.method_state`` included) are loaded."""

    def base_update_terms(self, adapter: AdapterView, name: str) -> list[Term]:
        """``[(B, A, c), ...]`` with ``W_now = W_original + Σ c·B A`` for layer ``name``: how far
        training moved its base weight (empty unless ``changes_base``)."""
        return []

    def param_groups(self, forms: list[nn.Module], lr: float, weight_decay: float) -> list[dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover

    def start(self, adapter: AdapterView) -> None:
        """Called when an optimizer is built for ``adapter`` (before its first step)."""

    def before_step(self, adapter: AdapterView) -> None:
        """Called before every optimizer step, with the step's gradients in place."""

    def after_step(self, adapter: AdapterView) -> None:
        """Called after every optimizer step."""


OPTIMIZERS: Registry[type[OptimizerRecipe]] = Registry("optimizer recipe")
