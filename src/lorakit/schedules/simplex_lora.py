"""SimplexLoRA: rank budget shared through weights on the simplex (Davydenko, Shalygin, MIPT; seed 003).

Every adapter ``i`` of the ``n`` gets a gate ``ω_i`` (``y = W x + ω_i·s·B_i A_i x``), ``ω⁽⁰⁾ = 1/n``,
all ranks ``r₀``. After every optimizer step ``ω ← proj_simplex(ω)`` (exact Euclidean projection).
Every ``simplex_every`` steps (default 50), ``simplex_reallocations`` times (default 3), each rank
is set to ``r_i = min(ceil(r₀·n·ω_i), min(out, in))`` and the pair resized: grown with ``B A``
unchanged, shrunk to its best rank-``r_i`` approximation, removed at ``r_i = 0``. Training goes
on from the learned product (it is never re-initialised; the authors' later public code
re-initialises, which discards what was learned). After the last reallocation the gates are
folded into the scales (``s_i ← ω_i·s_i``) and training continues as plain LoRA at the chosen
ranks. The total rank stays within ``r₀·n + n`` (each ceiling adds less than one).

With a spectral init (OLoRA, PiSSA), which moved ``s·B₀A₀`` out of ``W``, each layer's scale
starts at ``n·s`` so that ``ω₀·(n·s)·B₀A₀ = s·B₀A₀`` and the outputs are unchanged at attach.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..core.component import GATED, RESIZABLE
from ..core.generators import layer_generator
from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..core.steps import next_step, start_counter
from ..ops.simplex import project_simplex
from .base import GATE_LR, SCHEDULES, Schedule, gated_forms, project_gates, rank_limit, require_steps

STEP_KEY, COUNT_KEY = "simplex_lora.step", "simplex_lora.n"
EVERY = Option("simplex_every", int, 50, "optimizer steps between reallocations", minimum=1)
REALLOCATIONS = Option("simplex_reallocations", int, 3, "how many reallocations before plain LoRA", minimum=1)


def simplex_ranks(weights: dict[str, float], base_rank: int, count: int, limits: dict[str, int]) -> dict[str, int]:
    """``r_i = min(ceil(r₀·n·ω_i), limit_i)`` (0 where ``ω_i = 0``)."""
    return {name: min(math.ceil(base_rank * count * w - 1e-9), limits[name]) if w > 0 else 0
            for name, w in weights.items()}


@SCHEDULES.register("simplex_lora")
class SimplexLora(Schedule):
    """Gates on the simplex, a few reallocations of rank, then plain LoRA."""

    acts_at_steps: ClassVar[bool] = True

    options = (GATE_LR, EVERY, REALLOCATIONS)
    requires: ClassVar[frozenset[str]] = frozenset({GATED, RESIZABLE})
    needs: ClassVar[str] = "gates and resizes low-rank pairs"
    resizes: ClassVar[bool] = True
    shardable: ClassVar[bool] = False  # it replaces parameters
    summary: ClassVar[str] = "gates ω on the simplex, ranks ceil(r₀·n·ω)"

    @classmethod
    def check_run(cls, spec: MethodSpec, total_steps: int) -> None:
        require_steps("simplex_every", spec.simplex_every, total_steps)

    def prepare(self, adapter: AdapterView) -> None:
        count = len(adapter.layers)
        for form in adapter.forms():
            form.set_gate(1.0 / count)
            if adapter.spectral:  # W lost s·B₀A₀ at init: ω₀·(n·s)·B₀A₀ puts exactly that back
                form.scale *= count
        start_counter(adapter.method_state, STEP_KEY)
        adapter.method_state.setdefault(COUNT_KEY, torch.tensor(count))

    @torch.no_grad()
    def after_step(self, adapter: AdapterView) -> bool:
        step = next_step(adapter.method_state, STEP_KEY)
        forms = gated_forms(adapter)
        if not forms:
            return False
        project_gates(forms, project_simplex)
        every, reallocations = self.spec.simplex_every, self.spec.simplex_reallocations
        if step % every != 0 or step // every > reallocations:
            return False
        self.reallocate(adapter, final=step // every == reallocations, step=step)
        return True

    def reallocate(self, adapter: AdapterView, final: bool, step: int) -> None:
        """``r_i = min(ceil(r₀·n·ω_i), min(out, in))`` for every layer; the last time, fold the gates."""
        weights = {name: float(layer.form.gate.detach()) for name, layer in adapter.layers.items()}
        limits = {name: rank_limit(adapter, name) for name in weights}
        ranks = simplex_ranks(weights, self.spec.rank, int(adapter.method_state[COUNT_KEY]), limits)
        for name, rank in ranks.items():
            device = adapter.layers[name].base_layer.weight.device
            adapter.resize_layer(name, rank, layer_generator(self.spec.seed, f"{name}@{step}", device))
        if final:
            for form in adapter.forms():
                form.fold_gate()
