"""Delta-LoRA: the frozen weight follows the adapter's change (Zi et al. 2023, arXiv 2309.02411).

AdamW on ``A``, ``B``; after every optimizer step ``t → t+1`` with ``t ≥ start_step`` (the
paper's K), under ``no_grad``: ``W ← W + λ·s·(B_{t+1} A_{t+1} − B_t A_t)``, ``λ`` the update
ratio (``delta_ratio``, default 2; ``delta_start_step`` default 0 — the paper used K = 500 on
long runs). Adapter dropout must be 0 (the paper drops it so that the gradient of ``B A``
is the gradient of ``W``; ``DeltaLora.validate`` enforces it). The base weights must be float32:
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

from typing import ClassVar

import torch
from torch import nn

from ..core.component import ADDITIVE, Parts
from ..core.options import Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..core.steps import current_step, next_step, start_counter
from ..core.terms import Term, add_products
from ..errors import LorakitError
from ..quantized import is_quantized
from .adamw import AdamW
from .base import OPTIMIZERS

RATIO = Option("delta_ratio", float, 2.0, "λ: W moves by λ·s·Δ(B A) after every step", minimum=0.0,
               open_minimum=True, label="delta_ratio (Delta-LoRA λ)")
START_STEP = Option("delta_start_step", int, 0, "K: the optimizer step from which W follows the adapter",
                    minimum=0)
STEP_KEY = "delta_lora.step"


def refuse_half_precision(weights: list[torch.Tensor]) -> None:
    """Training moves ``W`` by ``λ·s·Δ(BA)`` per step, about one unit in the last place of a
    16-bit weight: most of it would be rounded away. Loading or merging (one addition) is fine."""
    half = sorted({str(w.dtype).removeprefix("torch.") for w in weights if w.dtype in (torch.bfloat16, torch.float16)})
    if half:
        raise LorakitError(f"delta_lora updates the base weights in place, by less than {half[0]} can represent; "
                           "train with the model in float32 (model.dtype: float32; train.mixed_precision "
                           "still applies)")


@OPTIMIZERS.register("delta_lora")
class DeltaLora(AdamW):
    """AdamW plus the in-place update of each adapted base weight after every step."""

    acts_at_steps: ClassVar[bool] = True

    options = (RATIO, START_STEP)
    requires: ClassVar[frozenset[str]] = frozenset({ADDITIVE})
    needs: ClassVar[str] = "updates W from the change of B A"
    changes_base: ClassVar[bool] = True
    fixed_pair: ClassVar[str | None] = "moves W by the change of each layer's own pair B A"
    base_update_note: ClassVar[str | None] = (
        "Delta-LoRA changed the base weights while training: W = W_K + λ·s·(B A − B_K A_K), "
        "with B_K, A_K saved as <layer>.delta_start.B/A; lorakit.load rebuilds W from the "
        "unmodified base (to float rounding), and `lorakit merge` exports the adapted model "
        "as full weights. Loading these factors anywhere else without that update gives a "
        "different model.")
    summary: ClassVar[str] = "W follows the adapter: W += λ·s·Δ(B A) after every step (dropout 0)"

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self._before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the factors before this step

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.dropout != 0:
            raise LorakitError(f"Delta-LoRA needs adapter dropout 0 (got {spec.dropout}); set dropout=0")
        super().validate(spec, parts)

    def check_targets(self, targets: list[tuple[str, nn.Linear]]) -> None:
        quantized = [name for name, base in targets if is_quantized(base)]
        if quantized:
            raise LorakitError(f"delta_lora writes the base weights after every step, and {quantized[0]!r} is "
                               "quantized (4/8-bit W cannot take such updates); use another recipe on a quantized "
                               "base, or load the base unquantized")
        refuse_half_precision([base.weight for _, base in targets])

    def prepare(self, adapter: AdapterView) -> None:
        start_counter(adapter.method_state, STEP_KEY)

    def start(self, adapter: AdapterView) -> None:
        refuse_half_precision([layer.base_layer.weight for layer in adapter.layers.values()])

    @torch.no_grad()
    def before_step(self, adapter: AdapterView) -> None:
        """Snapshot ``B_t, A_t`` (and keep ``B_K, A_K`` in ``method_state`` at ``t = K``)."""
        step = current_step(adapter.method_state, STEP_KEY)
        if step < self.spec.delta_start_step:  # no update after this step: nothing to remember
            return
        for name, layer in adapter.layers.items():
            factors = (layer.form.B.detach().clone(), layer.form.A.detach().clone())
            self._before[name] = factors
            if step == self.spec.delta_start_step:
                adapter.method_state[f"{name}.delta_start.B"], adapter.method_state[f"{name}.delta_start.A"] = factors

    @torch.no_grad()
    def after_step(self, adapter: AdapterView) -> None:
        """``W ← W + λ·s·(B_{t+1} A_{t+1} − B_t A_t)`` from step ``K`` on."""
        if current_step(adapter.method_state, STEP_KEY) >= self.spec.delta_start_step:
            for name, layer in adapter.layers.items():
                B_old, A_old = self._before[name]
                coefficient = self.spec.delta_ratio * layer.form.scale
                add_products(layer.base_layer.weight,
                             [(layer.form.B, layer.form.A, coefficient), (B_old, A_old, -coefficient)])
        next_step(adapter.method_state, STEP_KEY)
        self._before.clear()

    def base_update_terms(self, adapter: AdapterView, name: str) -> list[Term]:
        """``W − W_K = λ·s·B A − λ·s·B_K A_K`` (empty before the updates start)."""
        state = adapter.method_state
        if f"{name}.delta_start.B" not in state:
            return []
        form = adapter.layers[name].form
        coefficient = self.spec.delta_ratio * form.scale
        return [(form.B, form.A, coefficient),
                (state[f"{name}.delta_start.B"], state[f"{name}.delta_start.A"], -coefficient)]

    def on_load(self, adapter: AdapterView) -> None:
        """Rebuild ``W = W_K + λ·s·(B A − B_K A_K)`` from the saved start factors."""
        for name, layer in adapter.layers.items():
            add_products(layer.base_layer.weight, self.base_update_terms(adapter, name))
