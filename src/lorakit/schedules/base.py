"""The interface of a rank schedule, its registry, and helpers the gated schedules share.

A schedule is created per adapter (``SCHEDULES.get(name)(spec)``) and owns its state (AdaLoRA's
importance EMAs, LoRA-drop's importance sums). The ``Adapter`` calls ``before_step`` and
``after_step`` from its optimizer hooks, after the recipe's; when ``after_step`` reports that it
changed the adapter's structure (through the adapter's ``remove_layer``/``resize_layer``/
``replace_form``/``share_form``), the adapter points the optimizer at the new parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.component import GATED, Component
from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..errors import LorakitError
from ..registry import Registry

GATE_LR = Option("gate_lr", float, None, "learning rate of the gates ω (null: the optimizer's lr)",
                 minimum=0.0, open_minimum=True, default_text="null (lr)")


class Schedule(Component):
    """Decides which adapters exist and at which rank.

    ``resizes``: the schedule replaces adapter parameters during training (grows, shrinks,
    removes or shares adapters); a data-parallel wrapper must then be rebuilt (``lorakit train``
    does). ``shardable``: the schedule runs on FSDP2-sharded parameters (``train.fsdp``); one that
    resizes or computes on whole factor matrices does not. A schedule that ``requires`` the
    ``gated`` capability gives every adapter a trainable scalar ``ω`` (its own optimizer group at
    ``gate_lr``).
    """

    kind: ClassVar[str] = "schedule"
    resizes: ClassVar[bool] = False
    shardable: ClassVar[bool] = True

    def __init__(self, spec: MethodSpec) -> None:
        self.spec = spec

    @classmethod
    def uses_gates(cls) -> bool:
        return GATED in cls.requires

    @classmethod
    def check_run(cls, spec: MethodSpec, total_steps: int) -> None:
        """Refuse a run of ``total_steps`` optimizer steps too short for ``spec`` (nothing by default)."""

    def check_targets(self, targets: list[tuple[str, nn.Linear]]) -> None:
        """Refuse these target layers, before anything is attached (nothing by default)."""

    def prepare(self, adapter: AdapterView) -> None:
        """Called once, after the adapters are initialised and before training."""

    def start(self, adapter: AdapterView) -> None:
        """Called when an optimizer is built for ``adapter`` (before its first step)."""

    def before_step(self, adapter: AdapterView) -> None:
        """Called before every optimizer step, with the step's gradients in place."""

    def after_step(self, adapter: AdapterView) -> bool:
        """Called after every optimizer step; ``True`` when it changed which parameters exist."""
        return False

    def release(self, adapter: AdapterView) -> None:
        """Remove whatever the schedule hooked into the model (``merge_and_unload`` calls it)."""

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """State that training checkpoints keep but saved adapters need not (AdaLoRA's EMAs)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        """Restore ``checkpoint_state``; called after the optimizer is built, on resume."""


SCHEDULES: Registry[type[Schedule]] = Registry("rank schedule")


def require_steps(option: str, first: int, total_steps: int) -> None:
    """Refuse a run of ``total_steps`` optimizer steps that ends before the schedule's first
    decision at step ``first`` (set by ``option``): the method would silently never act."""
    if first >= total_steps:
        raise LorakitError(f"{option} puts the schedule's first decision at step {first}, but the run has "
                           f"only {total_steps} optimizer steps; set {option} below {total_steps} or train longer")


def gated_forms(adapter: AdapterView) -> list[Any]:
    """The adapter's forms that still carry a gate ``ω`` (the schedule gave every form one; a
    folded gate is ``None``)."""
    return [form for form in adapter.forms() if form.gate is not None]


@torch.no_grad()
def project_gates(forms: list[Any], projection: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``ω ← projection(ω)`` over the stacked gates of ``forms``, written back in one fused copy."""
    gates = [form.gate for form in forms]
    projected = projection(torch.stack(gates).float())
    torch._foreach_copy_(gates, list(projected.to(gates[0].dtype).unbind()))


def rank_limit(adapter: AdapterView, name: str) -> int:
    """The largest rank layer ``name`` can take: ``min(out, in)``."""
    base = adapter.layers[name].base_layer  # out/in features: a 4-bit weight is stored packed
    return min(base.out_features, base.in_features)
