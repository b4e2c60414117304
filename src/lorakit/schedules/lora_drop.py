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

from typing import ClassVar

import torch
from torch import nn

from ..core.component import RESIZABLE, Parts
from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..core.steps import current_step, next_step, start_counter
from ..errors import LorakitError
from ..ops.layer_importance import DEFAULT_THRESHOLD, ImportanceAccumulator, select_layers
from .base import SCHEDULES, Schedule, require_steps

STEP_KEY = "lora_drop.step"
WARMUP_STEPS = Option("drop_warmup_steps", int, 20, "optimizer steps of LoRA on every layer before the selection",
                      minimum=1)
TOP_N = Option("drop_top_n", int, None, "keep the n most important layers (instead of drop_threshold)", minimum=1)
THRESHOLD = Option("drop_threshold", float, None, "keep the most important layers up to this share of the importance",
                   minimum=0.0, maximum=1.0, open_minimum=True, requirement="a share of the total importance in (0, 1]",
                   derive=lambda values, run: DEFAULT_THRESHOLD if values.get("drop_top_n") is None else None,
                   default_text=f"{DEFAULT_THRESHOLD} (null with drop_top_n)")


@SCHEDULES.register("lora_drop")
class LoraDrop(Schedule):
    """Importance from the warm-up, then shared adapters for the unimportant layers."""

    acts_at_steps: ClassVar[bool] = True

    options = (WARMUP_STEPS, TOP_N, THRESHOLD)
    requires: ClassVar[frozenset[str]] = frozenset({RESIZABLE})
    needs: ClassVar[str] = "replaces and shares low-rank pairs"
    resizes: ClassVar[bool] = True
    shardable: ClassVar[bool] = False  # it replaces parameters
    summary: ClassVar[str] = "warm-up importance; dropped layers share one adapter per shape"

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self.accumulator = ImportanceAccumulator(training_only=True)
        self.selecting = False  # this optimizer started before the selection: it counts the steps

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.drop_threshold is not None and spec.drop_top_n is not None:
            raise LorakitError("drop_threshold and drop_top_n are two ways to choose the kept layers; set one of them")
        if spec.init != "kaiming":
            raise LorakitError(f"lora_drop replaces the dropped layers' adapters by shared fresh ones; init "
                               f"{spec.init!r} rewrites the base weights and cannot be dropped that way "
                               "(use init='kaiming')")

    @classmethod
    def check_run(cls, spec: MethodSpec, total_steps: int) -> None:
        require_steps("drop_warmup_steps", spec.drop_warmup_steps, total_steps)

    def check_targets(self, targets: list[tuple[str, nn.Linear]]) -> None:
        if self.spec.drop_top_n is not None and self.spec.drop_top_n > len(targets):
            raise LorakitError(f"drop_top_n={self.spec.drop_top_n} exceeds the {len(targets)} adapted layers; "
                               f"choose at most {len(targets)}")

    def prepare(self, adapter: AdapterView) -> None:
        start_counter(adapter.method_state, STEP_KEY)

    def start(self, adapter: AdapterView) -> None:
        # a resumed or reloaded adapter past its selection trains plainly
        self.selecting = current_step(adapter.method_state, STEP_KEY) < self.spec.drop_warmup_steps
        if self.selecting:
            self.accumulator.attach(adapter)

    @torch.no_grad()
    def after_step(self, adapter: AdapterView) -> bool:
        warmup, step = self.spec.drop_warmup_steps, next_step(adapter.method_state, STEP_KEY)  # counts every step
        if not self.selecting:
            return False
        self.accumulator.sync()  # every step: the sums over all processes, which a checkpoint keeps
        if step != warmup:
            return False
        self.accumulator.detach()
        if not self.accumulator.tokens:
            raise LorakitError(f"lora_drop's warm-up saw no training forward pass in {warmup} steps, so it "
                               "has no importance to select layers by; run the forwards with gradients")
        self.drop(adapter, self.accumulator.importance())
        return True

    def release(self, adapter: AdapterView) -> None:
        self.accumulator.detach()

    def drop(self, adapter: AdapterView, importance: dict[str, float]) -> None:
        """Keep the selected layers; the others share one fresh adapter per weight shape."""
        kept = set(select_layers(importance, self.spec.drop_threshold, self.spec.drop_top_n))
        owners: dict[tuple[int, ...], str] = {}
        for name, layer in list(adapter.layers.items()):
            if name in kept:
                continue
            shape = (layer.base_layer.out_features, layer.base_layer.in_features)  # (a 4-bit W is packed)
            if shape in owners:
                adapter.share_form(name, owners[shape])
            else:  # the first dropped layer of this shape owns the shared adapter (new parameters, fresh state)
                owners[shape] = name
                adapter.replace_form(name, adapter.fresh_form(name, f"{name}@shared"))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        sums = {"total": self.accumulator.totals, "tokens": self.accumulator.tokens}
        return {f"{name}|{kind}": torch.as_tensor(value, dtype=torch.float64).cpu()
                for kind, values in sums.items() for name, value in values.items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        for key, value in state.items():
            name, kind = key.rsplit("|", 1)
            (self.accumulator.totals if kind == "total" else self.accumulator.tokens)[name] = float(value)
