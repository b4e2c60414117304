"""Tensors that may be shards: under FSDP2 (torch's ``fully_shard``) a parameter is a ``DTensor``
holding this process's part of it.

``full`` gathers one (a collective: every process must call it for the same tensors in the same
order); ``copy_full`` writes a full tensor into a parameter, sharded or not.
"""

from __future__ import annotations

import torch


def is_dtensor(tensor: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch before 2.5: no public DTensor, hence no FSDP2 shards
        return False
    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from the processes if ``tensor`` is a shard, else itself."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


@torch.no_grad()
def copy_full(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target ← value`` for a full ``value``; a sharded ``target`` keeps only its own part."""
    if is_dtensor(target):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
    target.copy_(value)
