"""Delta-LoRA: the frozen weight follows the adapter's change (Zi et al. 2023, arXiv 2309.02411).

AdamW on ``A``, ``B``; after every optimizer step ``t → t+1`` with ``t ≥ start_step`` (the
paper's K), under ``no_grad``: ``W ← W + λ·s·(B_{t+1} A_{t+1} − B_t A_t)``, ``λ`` the update
ratio (``delta_ratio``, default 2; ``delta_start_step`` default 0 — the paper used K = 500 on
long runs). Adapter dropout must be 0 (the paper drops it so that the gradient of ``B A``
is the gradient of ``W``; ``methods.validate`` enforces it). The base weights must be float32:
a step's update is about one unit in the last place of a bf16/fp16 weight and would mostly be
rounded away (refused at attach and when the optimizer is built; loading and merging such
an adapter onto a 16-bit model is fine; ``train.mixed_precision`` still runs the matmuls in 16 bits).

The updates telescope: ``W_t = W_K + λ·s·(B_t A_t − B_K A_K)``. lorakit keeps ``B_K, A_K``
(the factors when the updates start) in the adapter's ``method_state``, so a saved adapter
stays low-rank and loading rebuilds ``W`` from the unmodified base to float rounding
(``lorakit merge`` exports the adapted model as full weights). Training checkpoints also hold
the exact ``W`` of every adapted layer, so that resuming is bit-exact.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import LorakitError
from ..inits.base import add_products
from ..schedules.base import next_step
from . import RECIPES
from .adamw import AdamW

DEFAULT_RATIO = 2.0
STEP_KEY = "delta_lora.step"


def update_ratio(spec: Any) -> float:
    return DEFAULT_RATIO if spec.delta_ratio is None else float(spec.delta_ratio)


def start_step(spec: Any) -> int:
    return 0 if spec.delta_start_step is None else int(spec.delta_start_step)


def refuse_half_precision(weights: list[torch.Tensor]) -> None:
    """Training moves ``W`` by ``λ·s·Δ(BA)`` per step, about one unit in the last place of a
    16-bit weight: most of it would be rounded away. Loading or merging (one addition) is fine."""
    half = sorted({str(w.dtype).removeprefix("torch.") for w in weights if w.dtype in (torch.bfloat16, torch.float16)})
    if half:
        raise LorakitError(f"delta_lora updates the base weights in place, by less than {half[0]} can represent; "
                           "train with the model in float32 (model.dtype: float32; train.mixed_precision "
                           "still applies)")


class DeltaLora(AdamW):
    """AdamW plus the in-place update of each adapted base weight after every step."""

    changes_base = True
    fixed_pair = "moves W by the change of each layer's own pair B A"
    base_update_note = ("Delta-LoRA changed the base weights while training: W = W_K + λ·s·(B A − B_K A_K), "
                        "with B_K, A_K saved as <layer>.delta_start.B/A; lorakit.load rebuilds W from the "
                        "unmodified base (to float rounding), and `lorakit merge` exports the adapted model "
                        "as full weights. Loading these factors anywhere else without that update gives a "
                        "different model.")

    def check_targets(self, spec: Any, targets: list[tuple[str, Any]]) -> None:
        refuse_half_precision([base.weight for _, base in targets])

    def prepare(self, adapter: Any) -> None:
        adapter.method_state.setdefault(STEP_KEY, torch.zeros((), dtype=torch.int64))

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        refuse_half_precision([layer.base_layer.weight for layer in adapter.layers.values()])
        ratio, first = update_ratio(adapter.spec), start_step(adapter.spec)
        state = adapter.method_state
        before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        @torch.no_grad()
        def snapshot(*_: Any) -> None:
            step = int(state[STEP_KEY])
            if step < first:  # no update after this step: nothing to remember
                return
            for name, layer in adapter.layers.items():
                factors = (layer.form.B.detach().clone(), layer.form.A.detach().clone())
                before[name] = factors
                if step == first:
                    state[f"{name}.delta_start.B"], state[f"{name}.delta_start.A"] = factors

        @torch.no_grad()
        def update(*_: Any) -> None:
            step = int(state[STEP_KEY])
            if step >= first:
                for name, layer in adapter.layers.items():
                    B_old, A_old = before[name]
                    coefficient = ratio * layer.form.scale
                    add_products(layer.base_layer.weight,
                                 [(layer.form.B, layer.form.A, coefficient), (B_old, A_old, -coefficient)])
            next_step(adapter, STEP_KEY)
            before.clear()

        optimizer.register_step_pre_hook(snapshot)
        optimizer.register_step_post_hook(update)

    def base_update_terms(self, adapter: Any, name: str) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """``W − W_K = λ·s·B A − λ·s·B_K A_K`` (empty before the updates start)."""
        state = adapter.method_state
        if f"{name}.delta_start.B" not in state:
            return []
        form = adapter.layers[name].form
        coefficient = update_ratio(adapter.spec) * form.scale
        return [(form.B, form.A, coefficient),
                (state[f"{name}.delta_start.B"], state[f"{name}.delta_start.A"], -coefficient)]

    def on_load(self, adapter: Any) -> None:
        """Rebuild ``W = W_K + λ·s·(B A − B_K A_K)`` from the saved start factors."""
        for name, layer in adapter.layers.items():
            add_products(layer.base_layer.weight, self.base_update_terms(adapter, name))


RECIPES.register("delta_lora")(DeltaLora())
