"""Plain AdamW over every trainable adapter parameter (Loshchilov & Hutter, arXiv 1711.05101)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from .base import OPTIMIZERS, OptimizerRecipe, params_by_role


@OPTIMIZERS.register("adamw")
class AdamW(OptimizerRecipe):
    """One group: all adapter parameters at learning rate ``η``."""

    summary: ClassVar[str] = "one group at lr"

    def param_groups(self, forms: list[nn.Module], lr: float, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for role, group in params_by_role(forms).items() if role != "gate" for p in group]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "adapter"}]
