"""Rank schedules: which adapters exist, and at which rank, over the course of training."""

from ..registry import Registry
from .base import Schedule

SCHEDULES: Registry[Schedule] = Registry("rank schedule")

from . import fixed  # noqa: E402,F401  (registers itself)

__all__ = ["SCHEDULES", "Schedule"]
