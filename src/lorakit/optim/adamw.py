"""Plain AdamW over every trainable adapter parameter (Loshchilov & Hutter, arXiv 1711.05101)."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import RECIPES
from .base import Recipe, params_by_role


class AdamW(Recipe):
    """One group: all adapter parameters at learning rate ``η``."""

    def param_groups(self, forms: list[nn.Module], spec: Any, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        params = [p for role, group in params_by_role(forms).items() if role != "gate" for p in group]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "adapter"}]


RECIPES.register("adamw")(AdamW())
