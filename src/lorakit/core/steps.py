"""Optimizer-step counters kept in an adapter's ``method_state`` (saved with it), so that a
resumed or reloaded adapter counts on from where it stopped."""

from __future__ import annotations

from collections.abc import MutableMapping

import torch

MethodState = MutableMapping[str, torch.Tensor]


def start_counter(state: MethodState, key: str) -> None:
    """Create the counter ``key`` at 0 unless a loaded adapter brought it."""
    state.setdefault(key, torch.zeros((), dtype=torch.int64))


def current_step(state: MethodState, key: str) -> int:
    """The optimizer steps counted so far under ``key``."""
    return int(state.get(key, 0))


def next_step(state: MethodState, key: str) -> int:
    """Advance and return the counter ``key``."""
    step = current_step(state, key) + 1
    state[key] = torch.tensor(step)
    return step
