"""LoRA+: a larger learning rate for ``B`` than for ``A`` (Hayou et al. 2024, arXiv 2402.12354).

``b_only`` mode (the paper's definition, the default): ``η_A = η``, ``η_B = λ·η``.
``symmetric`` mode (the OLoRA+ authors' notebook, seed 000): ``η_A = η/λ``, ``η_B = η·λ``, an
effective ratio of ``λ²``. Any ``λ > 0`` is accepted: OLoRA+ studies ``λ < 1`` ("refinement",
``A`` learns faster) as well as ``λ > 1`` ("exploration"). Vector parameters of a form
(DoRA's magnitude: role ``other``) take ``B``'s rate, as in PEFT, but no weight decay (PEFT's
``create_loraplus_optimizer`` decays DoRA's magnitude, which pulls whole rows of the adapted
weight towards 0). The rank schedules' gates ``ω`` are not the recipe's: the ``Adapter`` gives
them their own group at ``gate_lr``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..core.options import Option
from .base import OPTIMIZERS, OptimizerRecipe, params_by_role

LR_RATIO = Option("lr_ratio", float, 16.0, "λ: B's learning rate over A's (any λ > 0; λ < 1 lets A learn faster)",
                  minimum=0.0, open_minimum=True, label="lr_ratio (LoRA+ λ)", requirement="a finite number > 0",
                  hint="use λ<1 to let A learn faster")
LR_RATIO_MODES = ("b_only", "symmetric")
DEFAULT_LR_RATIO_MODE = LR_RATIO_MODES[0]
LR_RATIO_MODE = Option("lr_ratio_mode", str, DEFAULT_LR_RATIO_MODE,
                       "b_only: η_A = η, η_B = λ·η; symmetric: η_A = η/λ, η_B = λ·η", choices=LR_RATIO_MODES,
                       null_is_default=False)


def lora_plus_rates(lr: float, ratio: float, mode: str) -> tuple[float, float]:
    """``(η_A, η_B)`` for base rate ``η``, ratio ``λ`` and mode ``b_only`` or ``symmetric``."""
    if mode == "symmetric":
        return lr / ratio, lr * ratio
    return lr, lr * ratio


@OPTIMIZERS.register("lora_plus")
class LoraPlus(OptimizerRecipe):
    """Groups ``A`` at ``η_A`` and ``B`` (plus vectors) at ``η_B``."""

    options = (LR_RATIO, LR_RATIO_MODE)
    summary: ClassVar[str] = "B learns λ times faster than A"

    def param_groups(self, forms: list[nn.Module], lr: float, weight_decay: float) -> list[dict[str, Any]]:
        lr_A, lr_B = lora_plus_rates(lr, self.spec.lr_ratio, self.spec.lr_ratio_mode)
        roles = params_by_role(forms)
        groups = [
            {"params": roles["A"], "lr": lr_A, "weight_decay": weight_decay, "name": "A"},
            {"params": roles["B"], "lr": lr_B, "weight_decay": weight_decay, "name": "B"},
            {"params": roles["other"], "lr": lr_B, "weight_decay": 0.0, "name": "other"},
        ]
        return [g for g in groups if g["params"]]
