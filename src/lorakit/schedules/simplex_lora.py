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
from typing import Any

import torch

from ..resizing import refresh_optimizer, resize_layer
from . import SCHEDULES
from .base import Schedule, gated_forms, next_step, project_gates, rank_limit, require_steps
from ..ops.simplex import project_simplex

DEFAULT_EVERY = 50
DEFAULT_REALLOCATIONS = 3
STEP_KEY, COUNT_KEY = "simplex_lora.step", "simplex_lora.n"


def simplex_ranks(weights: dict[str, float], base_rank: int, count: int, limits: dict[str, int]) -> dict[str, int]:
    """``r_i = min(ceil(r₀·n·ω_i), limit_i)`` (0 where ``ω_i = 0``)."""
    return {name: min(math.ceil(base_rank * count * w - 1e-9), limits[name]) if w > 0 else 0
            for name, w in weights.items()}


class SimplexLora(Schedule):
    """Gates on the simplex, a few reallocations of rank, then plain LoRA."""

    uses_gates = True
    resizes = True

    def prepare(self, adapter: Any) -> None:
        from ..inits import INITS

        count = len(adapter.layers)
        spectral = INITS.get(adapter.spec.init).rewrites_base
        for form in adapter.forms():
            form.set_gate(1.0 / count)
            if spectral:  # W lost s·B₀A₀ at init: ω₀·(n·s)·B₀A₀ puts exactly that back
                form.scale *= count
        adapter.method_state.setdefault(STEP_KEY, torch.tensor(0))
        adapter.method_state.setdefault(COUNT_KEY, torch.tensor(count))

    def complete(self, spec: Any, total_steps: int) -> Any:
        require_steps("simplex_every", spec.simplex_every or DEFAULT_EVERY, total_steps)
        return spec

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        spec = adapter.spec
        every = spec.simplex_every or DEFAULT_EVERY
        reallocations = spec.simplex_reallocations or DEFAULT_REALLOCATIONS

        @torch.no_grad()
        def after_step(*_: Any) -> None:
            step = next_step(adapter, STEP_KEY)
            forms = gated_forms(adapter)
            if not forms:
                return
            project_gates(forms, project_simplex)
            if step % every == 0 and step // every <= reallocations:
                self.reallocate(adapter, optimizer, final=step // every == reallocations, step=step)

        optimizer.register_step_post_hook(after_step)

    @staticmethod
    def reallocate(adapter: Any, optimizer: torch.optim.Optimizer, final: bool, step: int) -> None:
        from ..adapter import layer_generator

        weights = {name: float(layer.form.gate.detach()) for name, layer in adapter.layers.items()}
        limits = {name: rank_limit(adapter, name) for name in weights}
        ranks = simplex_ranks(weights, adapter.spec.rank, int(adapter.method_state[COUNT_KEY]), limits)
        for name, rank in ranks.items():
            device = adapter.layers[name].base_layer.weight.device
            resize_layer(adapter, name, rank, layer_generator(adapter.spec.seed, f"{name}@{step}", device))
        if final:
            for form in adapter.forms():
                form.fold_gate()
        refresh_optimizer(adapter, optimizer)


SCHEDULES.register("simplex_lora")(SimplexLora())
