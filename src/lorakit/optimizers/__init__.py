"""Optimizer recipes: the parameter groups (and, for some methods, step hooks) of training."""

from ..registry import import_components
from .base import OPTIMIZERS, OptimizerRecipe

import_components(__name__, __path__)  # every module registers itself

__all__ = ["OPTIMIZERS", "OptimizerRecipe"]
