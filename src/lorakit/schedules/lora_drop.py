"""LoRA-drop: keep the important layers' adapters, share one among the rest (Zhou et al. 2024,
arXiv 2402.07721; seed 002).

(1) Train LoRA on every targeted layer for ``drop_warmup_steps`` optimizer steps (default 20).
(2) During those steps, every forward pass adds ``‖ΔW_i x_i‖² = ‖s·B_i A_i x_i‖²`` per token to
layer ``i``'s importance; ``I_i = E_x ‖ΔW_i x_i‖²`` over all warm-up tokens (padding excluded
through the forward's attention mask), normalised to sum 1.
(3) Keep the smallest set of most important layers whose cumulative importance reaches
``drop_threshold`` (default 0.9), or the ``drop_top_n`` most important ones. (4) Every other
layer is given one adapter shared by all dropped layers of its weight shape (fresh Kaiming
init, ``B = 0``, so the dropped layers' warm-up updates are discarded). (5) Training goes on.

Deviation: the paper estimates importance with a separate short training on a sampled subset
and then trains from scratch; here the first ``drop_warmup_steps`` steps of the run are that
sample, and the kept adapters continue from their warm-up state instead of restarting. Only the
``kaiming`` init applies (a spectral init has already rewritten the dropped layers' weights).
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch

from ..errors import LorakitError
from ..ops.layer_importance import DEFAULT_THRESHOLD, ImportanceAccumulator, select_layers
from ..resizing import refresh_optimizer
from . import SCHEDULES
from .base import Schedule, next_step, require_steps

DEFAULT_WARMUP_STEPS = 20
STEP_KEY = "lora_drop.step"


class LoraDrop(Schedule):
    """Importance from the warm-up, then shared adapters for the unimportant layers."""

    resizes = True

    def __init__(self) -> None:
        self._accumulators: WeakKeyDictionary[Any, ImportanceAccumulator] = WeakKeyDictionary()

    def complete(self, spec: Any, total_steps: int) -> Any:
        require_steps("drop_warmup_steps", spec.drop_warmup_steps or DEFAULT_WARMUP_STEPS, total_steps)
        return spec

    def check_targets(self, spec: Any, targets: list[tuple[str, Any]]) -> None:
        if spec.drop_top_n is not None and spec.drop_top_n > len(targets):
            raise LorakitError(f"drop_top_n={spec.drop_top_n} exceeds the {len(targets)} adapted layers; "
                               f"choose at most {len(targets)}")

    def prepare(self, adapter: Any) -> None:
        adapter.method_state.setdefault(STEP_KEY, torch.tensor(0))

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        warmup = adapter.spec.drop_warmup_steps or DEFAULT_WARMUP_STEPS
        if int(adapter.method_state[STEP_KEY]) >= warmup:
            return  # selection done (a resumed or reloaded adapter): plain training from here
        accumulator = self._accumulators.setdefault(adapter, ImportanceAccumulator(training_only=True))
        accumulator.attach(adapter)

        @torch.no_grad()
        def after_step(*_: Any) -> None:
            if next_step(adapter, STEP_KEY) != warmup:
                return
            accumulator.detach()
            if not accumulator.tokens:
                raise LorakitError(f"lora_drop's warm-up saw no training forward pass in {warmup} steps, so it "
                                   "has no importance to select layers by; run the forwards with gradients")
            self.drop(adapter, accumulator.importance())
            refresh_optimizer(adapter, optimizer)

        optimizer.register_step_post_hook(after_step)

    def release(self, adapter: Any) -> None:
        accumulator = self._accumulators.get(adapter)
        if accumulator is not None:
            accumulator.detach()

    @staticmethod
    def drop(adapter: Any, importance: dict[str, float]) -> None:
        """Keep the selected layers; the others share one fresh adapter per weight shape."""
        from ..adapter import initial_factors, new_form, share_forms

        spec = adapter.spec
        kept = set(select_layers(importance, spec.drop_threshold or DEFAULT_THRESHOLD, spec.drop_top_n))
        owners: dict[tuple[int, ...], str] = {}
        for name, layer in adapter.layers.items():
            if name in kept:
                continue
            shape = tuple(layer.base_layer.weight.shape)
            if shape in owners:
                share_forms(adapter, {name: owners[shape]})
                continue
            owners[shape] = name  # the first dropped layer of this shape owns the shared adapter
            form = new_form(spec, layer.base_layer, None, layer.training)
            form.set_factors(*initial_factors(form, layer.base_layer.weight, spec, f"{name}@shared"))
            layer.form = form  # new parameters: the optimizer refresh gives them fresh state

    def checkpoint_state(self, adapter: Any) -> dict[str, torch.Tensor]:
        accumulator = self._accumulators.get(adapter)
        if accumulator is None:
            return {}
        sums = {"total": accumulator.totals, "tokens": accumulator.tokens}
        return {f"{name}|{kind}": torch.as_tensor(value, dtype=torch.float64).cpu()
                for kind, values in sums.items() for name, value in values.items()}

    def load_checkpoint_state(self, adapter: Any, state: dict[str, torch.Tensor]) -> None:
        accumulator = self._accumulators.get(adapter)
        if accumulator is None:
            return
        for key, value in state.items():
            name, kind = key.rsplit("|", 1)
            (accumulator.totals if kind == "total" else accumulator.tokens)[name] = float(value)


SCHEDULES.register("lora_drop")(LoraDrop())
