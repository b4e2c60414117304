"""Rank schedules: which adapters exist, and at which rank, over the course of training."""

from ..registry import import_components
from .base import SCHEDULES, Schedule

import_components(__name__, __path__)  # every module registers itself

__all__ = ["SCHEDULES", "Schedule"]
