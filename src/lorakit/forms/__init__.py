"""Adapter forms: what ``ΔW`` is and how it is applied to a frozen ``nn.Linear``."""

from ..registry import import_components
from .base import FORMS, Form

import_components(__name__, __path__)  # every module registers itself

__all__ = ["FORMS", "Form"]
