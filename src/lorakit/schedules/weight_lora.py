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
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.component import GATED, RESIZABLE, Parts
from ..core.generators import layer_generator
from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..core.steps import next_step, start_counter
from ..errors import LorakitError
from .base import GATE_LR, SCHEDULES, Schedule, gated_forms, project_gates, rank_limit, require_steps

WARMUP_SHARE = 5  # default warm-up: selection_steps // 5
STEP_KEY, COUNT_KEY = "weight_lora.step", "weight_lora.n"


def _default_warmup(values: Mapping[str, Any], run: Mapping[str, int]) -> int:
    selection = values["selection_steps"]
    return min(max(1, selection // WARMUP_SHARE), selection - 1)


K = Option("weight_lora_k", int, None, "K: how many adapters survive the selection", minimum=1,
           derive=lambda values, run: math.ceil(run["layers"] / 2) if "layers" in run else None,
           default_text="⌈n/2⌉ (n adapted layers)")
SELECTION_STEPS = Option("selection_steps", int, 100, "optimizer steps of the selection phase", minimum=1)
SELECTION_WARMUP = Option("selection_warmup", int, None, "steps before the first projection onto K non-zeros",
                          minimum=0, derive=_default_warmup, default_text="min(max(1, selection_steps // 5), "
                          "selection_steps − 1)")


def keep_top_k(gates: torch.Tensor, k: int) -> torch.Tensor:
    """``gates`` with all but the ``k`` largest ``|ω|`` set to zero (ties: the earlier index)."""
    if k >= gates.numel():
        return gates.clone()
    kept = torch.sort(gates.abs(), descending=True, stable=True).indices[:k]
    out = torch.zeros_like(gates)
    out[kept] = gates[kept]
    return out


@SCHEDULES.register("weight_lora")
class WeightLora(Schedule):
    """Top-K gate selection, then plain LoRA on the K kept layers."""

    acts_at_steps: ClassVar[bool] = True

    options = (GATE_LR, K, SELECTION_STEPS, SELECTION_WARMUP)
    requires: ClassVar[frozenset[str]] = frozenset({GATED, RESIZABLE})
    needs: ClassVar[str] = "gates and removes low-rank pairs"
    resizes: ClassVar[bool] = True
    shardable: ClassVar[bool] = False  # it replaces parameters
    grow: ClassVar[bool] = False
    summary: ClassVar[str] = "gates ω, top-K selection, then LoRA on K layers"

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.selection_warmup >= spec.selection_steps:
            raise LorakitError(f"selection_warmup ({spec.selection_warmup}) must be smaller than selection_steps "
                               f"({spec.selection_steps})")

    @classmethod
    def check_run(cls, spec: MethodSpec, total_steps: int) -> None:
        require_steps("selection_steps", spec.selection_steps, total_steps)

    def check_targets(self, targets: list[tuple[str, nn.Linear]]) -> None:
        k = self.spec.weight_lora_k
        if k is not None and k > len(targets):
            raise LorakitError(f"weight_lora_k={k} exceeds the {len(targets)} adapted layers; "
                               f"choose K ≤ {len(targets)}")

    def prepare(self, adapter: AdapterView) -> None:
        for form in adapter.forms():
            form.set_gate(1.0)
        start_counter(adapter.method_state, STEP_KEY)
        adapter.method_state.setdefault(COUNT_KEY, torch.tensor(len(adapter.layers)))

    def budget(self, adapter: AdapterView) -> int:
        """``K``: how many adapters survive the selection."""
        return min(self.spec.weight_lora_k, int(adapter.method_state[COUNT_KEY]))

    @torch.no_grad()
    def after_step(self, adapter: AdapterView) -> bool:
        step = next_step(adapter.method_state, STEP_KEY)
        forms = gated_forms(adapter)
        if step <= self.spec.selection_warmup or step > self.spec.selection_steps or not forms:
            return False
        project_gates(forms, lambda gates: keep_top_k(gates, self.budget(adapter)))
        if step != self.spec.selection_steps:
            return False
        self.finish_selection(adapter, step)
        return True

    def finish_selection(self, adapter: AdapterView, step: int) -> None:
        """Remove the adapters whose gate is 0, fold the kept gates (WeightLoRA+: grow the kept)."""
        for name in [n for n, layer in adapter.layers.items() if float(layer.form.gate.detach()) == 0.0]:
            adapter.remove_layer(name)
        for form in adapter.forms():
            form.fold_gate()
        if self.grow:
            count, kept = int(adapter.method_state[COUNT_KEY]), self.budget(adapter)
            for name, layer in list(adapter.layers.items()):
                rank = min(self.spec.rank * count // kept, rank_limit(adapter, name))
                generator = layer_generator(self.spec.seed, f"{name}@{step}", layer.base_layer.weight.device)
                adapter.resize_layer(name, max(rank, layer.form.rank), generator)


@SCHEDULES.register("weight_lora_plus")
class WeightLoraPlus(WeightLora):
    """WeightLoRA, then the kept adapters grow to share the freed rank budget."""

    grow: ClassVar[bool] = True
    needs: ClassVar[str] = "gates, removes and grows low-rank pairs"
    summary: ClassVar[str] = "as weight_lora, kept layers grow to r₀·n/K"
