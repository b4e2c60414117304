"""The interface of a rank schedule."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import LorakitError


class Schedule:
    """Decides which adapters exist and at which rank; called by the ``Adapter``.

    ``uses_gates``: the schedule gives every adapter a trainable scalar ``ω`` (its own optimizer
    group, ``gate_lr``). ``resizes``: the schedule replaces adapter parameters during training
    (grows, shrinks, removes or shares adapters), which DistributedDataParallel cannot follow.
    """

    uses_gates = False
    resizes = False  # replaces adapter parameters mid-run (resize, remove, share)

    def complete(self, spec: Any, total_steps: int) -> Any:
        """``spec`` with what the schedule needs from the run filled in (``lorakit train`` knows the
        number of optimizer steps before attaching; it refuses a run too short for the schedule);
        unchanged by default."""
        return spec

    def check_targets(self, spec: Any, targets: list[tuple[str, Any]]) -> None:
        """Refuse ``spec`` for these target layers, before anything is attached (nothing by default)."""

    def prepare(self, adapter: Any) -> None:
        """Called once, after the adapters are initialised and before training."""

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        """Register per-step hooks on ``optimizer`` (none by default)."""

    def release(self, adapter: Any) -> None:
        """Remove whatever the schedule hooked into the model (``merge_and_unload`` calls it)."""

    def checkpoint_state(self, adapter: Any) -> dict[str, torch.Tensor]:
        """State that training checkpoints keep but saved adapters need not (AdaLoRA's EMAs)."""
        return {}

    def load_checkpoint_state(self, adapter: Any, state: dict[str, torch.Tensor]) -> None:
        """Restore ``checkpoint_state``; called after ``adapter.optimizer()`` on resume."""


def next_step(adapter: Any, key: str) -> int:
    """Advance and return the optimizer-step counter ``key`` kept in ``adapter.method_state``
    (saved with the adapter, so a resumed run counts on from where it stopped)."""
    step = int(adapter.method_state.get(key, 0)) + 1
    adapter.method_state[key] = torch.tensor(step)
    return step


def require_steps(option: str, first: int, total_steps: int) -> None:
    """Refuse a run of ``total_steps`` optimizer steps that ends before the schedule's first
    decision at step ``first`` (set by ``option``): the method would silently never act."""
    if first >= total_steps:
        raise LorakitError(f"{option} puts the schedule's first decision at step {first}, but the run has "
                           f"only {total_steps} optimizer steps; set {option} below {total_steps} or train longer")


def gated_forms(adapter: Any) -> list[Any]:
    """The adapter's forms that still carry a gate ``ω``."""
    return [form for form in adapter.forms() if getattr(form, "gate", None) is not None]


@torch.no_grad()
def project_gates(forms: list[Any], projection: Any) -> None:
    """``ω ← projection(ω)`` over the stacked gates of ``forms``, written back in one fused copy."""
    gates = [form.gate for form in forms]
    projected = projection(torch.stack(gates).float())
    torch._foreach_copy_(gates, list(projected.to(gates[0].dtype).unbind()))


def rank_limit(adapter: Any, name: str) -> int:
    """The largest rank layer ``name`` can take: ``min(out, in)``."""
    return min(adapter.layers[name].base_layer.weight.shape)
