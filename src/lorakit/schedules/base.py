"""The interface of a rank schedule."""

from __future__ import annotations

from typing import Any

import torch


class Schedule:
    """Decides which adapters exist and at which rank; called by the ``Adapter``."""

    def prepare(self, adapter: Any) -> None:
        """Called once, after the adapters are initialised and before training."""

    def install_hooks(self, optimizer: torch.optim.Optimizer, adapter: Any) -> None:
        """Register per-step hooks on ``optimizer`` (none by default)."""
