"""Activation memory: the bytes autograd keeps for backward, measured with saved-tensor hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_tensor_bytes(forward: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()
                       ) -> tuple[torch.Tensor, int]:
    """Run ``forward()`` and return its result and the bytes of the distinct storages autograd
    saved for backward, not counting the storages of ``exclude`` (weights, frozen or not)."""
    skipped = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in skipped and pointer not in seen:
            seen.add(pointer)
            total += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    return result, total
