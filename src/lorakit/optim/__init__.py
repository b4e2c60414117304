"""Optimizer recipes: the parameter groups (and, for some methods, step hooks) of training."""

from ..registry import Registry
from .base import Recipe

RECIPES: Registry[Recipe] = Registry("optimizer recipe")

from . import adamw, delta_lora, lora_fa, lora_plus  # noqa: E402,F401  (register themselves)

__all__ = ["RECIPES", "Recipe"]
