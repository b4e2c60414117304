"""Rank schedules: which adapters exist, and at which rank, over the course of training."""

from ..registry import Registry
from .base import Schedule

SCHEDULES: Registry[Schedule] = Registry("rank schedule")

from . import adalora, fixed, lora_drop, simplex_lora, weight_lora  # noqa: E402,F401  (register themselves)

__all__ = ["SCHEDULES", "Schedule"]
