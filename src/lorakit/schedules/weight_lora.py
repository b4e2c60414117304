"""WeightLoRA and WeightLoRA+ (Veprikov, Beznosikov et al., arXiv 2506.02724; seed 003).

Every adapter ``i`` gets a scalar gate ``ω_i = 1`` (``y = W x + ω_i·s·B_i A_i x``); ``A``, ``B`` and
``ω`` train together. During the first ``selection_steps`` optimizer steps (default 100), after
each step past a short warm-up, ``ω`` is projected onto "at most ``K`` non-zeros" (the
``K = weight_lora_k`` largest ``|ω_i|`` are kept, the rest set to 0; lorakit's default
``K = ⌈n/2⌉``). The warm-up (``selection_warmup``, default ``max(1, selection_steps // 5)``,
at most ``selection_steps − 1``) is
lorakit's addition: with ``B = 0`` at init, ``∂L/∂ω_i = s⟨B A x, ∂L/∂y⟩`` is exactly 0 at the first
step, all ``ω`` are still 1 after it, and a projection there would keep an arbitrary K whose
rivals could never come back (a zeroed gate stops its ``A``, ``B`` and ``ω`` from learning). The
seed's own outline is "learn WeightLoRA adapters on all layers, then select". At the end of the
selection phase the
adapters with ``ω_i = 0`` are removed, the kept gates are folded into the scales
(``s_i ← ω_i·s_i``), and training continues as classic LoRA on the ``K`` kept layers.

WeightLoRA+ then gives the freed rank budget to the kept adapters: each grows to
``min(⌊r₀·n/K⌋, min(out, in))`` with the product-preserving growth (``B A`` unchanged, the new
directions learn from there).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import LorakitError
from ..resizing import refresh_optimizer, remove_layer, resize_layer
from . import SCHEDULES
from .base import Schedule, gated_forms, next_step, project_gates, rank_limit, require_steps

DEFAULT_SELECTION_STEPS = 100
WARMUP_SHARE = 5  # default warm-up: selection_steps // 5
STEP_KEY, COUNT_KEY = "weight_lora.step", "weight_lora.n"


def keep_top_k(gates: torch.Tensor, k: int) -> torch.Tensor:
    """``gates`` with all but the ``k`` largest ``|ω|`` set to zero (ties: the earlier index)."""
    if k >= gates.numel():
        return gates.clone()
    kept = torch.sort(gates.abs(), descending=True, stable=True).indices[:k]
    out = torch.zeros_like(gates)
    out[kept] = gates[kept]
    return out


def selection_phase(spec: Any) -> tuple[int, int]:
    """``(selection_steps, selection_warmup)`` with their defaults."""
    selection = spec.selection_steps or DEFAULT_SELECTION_STEPS
    if spec.selection_warmup is not None:
        return selection, spec.selection_warmup
    return selection, min(max(1, selection // WARMUP_SHARE), selection - 1)


class WeightLora(Schedule):
    """Top-K gate selection, then plain LoRA on the K kept layers (``grow``: WeightLoRA+)."""

    uses_gates = True
    resizes = True

    def __init__(self, grow: bool) -> None:
        self.grow = grow

    def check_targets(self, spec: Any, targets: list[tuple[str, Any]]) -> None:
        if spec.weight_lora_k is not None and spec.weight_lora_k > len(targets):
            raise LorakitError(f"weight_lora_k={spec.weight_lora_k} exceeds the {len(targets)} adapted layers; "
                               f"choose K ≤ {len(targets)}")

    def complete(self, spec: Any, total_steps: int) -> Any:
        require_steps("selection_steps", selection_phase(spec)[0], total_steps)
        return spec

    def prepare(self, adapter: Any) -> None:
        for form in adapter.forms():
            form.set_gate(1.0)
        adapter.method_state.setdefault(STEP_KEY, torch.tensor(0))
        adapter.method_state.setdefault(COUNT_KEY, torch.tensor(len(adapter.layers)))

    @staticmethod
    def budget(adapter: Any) -> int:
        """``K``: how many adapters survive the selection."""
        count = int(adapter.method_state[COUNT_KEY])
        return min(adapter.spec.weight_lora_k or math.ceil(count / 2), count)

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        selection, warmup = selection_phase(adapter.spec)

        @torch.no_grad()
        def after_step(*_: Any) -> None:
            step = next_step(adapter, STEP_KEY)
            forms = gated_forms(adapter)
            if step <= warmup or step > selection or not forms:
                return
            project_gates(forms, lambda gates: keep_top_k(gates, self.budget(adapter)))
            if step == selection:
                self.finish_selection(adapter, optimizer, step)

        optimizer.register_step_post_hook(after_step)

    def finish_selection(self, adapter: Any, optimizer: torch.optim.Optimizer, step: int) -> None:
        from ..adapter import layer_generator

        for name in [n for n, layer in adapter.layers.items() if float(layer.form.gate.detach()) == 0.0]:
            remove_layer(adapter, name)
        for form in adapter.forms():
            form.fold_gate()
        if self.grow:
            count, kept = int(adapter.method_state[COUNT_KEY]), self.budget(adapter)
            for name, layer in list(adapter.layers.items()):
                rank = min(adapter.spec.rank * count // kept, rank_limit(adapter, name))
                generator = layer_generator(adapter.spec.seed, f"{name}@{step}", layer.base_layer.weight.device)
                resize_layer(adapter, name, max(rank, layer.form.rank), generator)
        refresh_optimizer(adapter, optimizer)


SCHEDULES.register("weight_lora")(WeightLora(grow=False))
SCHEDULES.register("weight_lora_plus")(WeightLora(grow=True))
