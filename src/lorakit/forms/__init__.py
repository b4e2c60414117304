"""Adapter forms: what ``ΔW`` is and how it is applied to a frozen ``nn.Linear``."""

from ..registry import Registry
from .base import Form

FORMS: Registry[type[Form]] = Registry("form")

from . import dora, lora, svd, vera  # noqa: E402,F401  (register themselves)

__all__ = ["FORMS", "Form"]
