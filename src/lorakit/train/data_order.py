"""The deterministic order in which training examples are seen.

Epoch ``e`` uses the permutation ``randperm(n, generator=seed·1000003 + e)``; it is cut into
micro-batches of ``batch_size × world_size`` examples (each process takes its slice) and groups
of ``grad_accum`` micro-batches form one optimizer step. The position in the data is therefore
just the global step, and a resumed run sees exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import math

import torch


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world_size: int = 1) -> int:
    """Optimizer steps in one pass over ``n_examples``."""
    micro_batches = math.ceil(n_examples / (batch_size * world_size))
    return math.ceil(micro_batches / grad_accum)


def step_batches(step: int, n_examples: int, batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """The example indices of this process's micro-batches for optimizer step ``step``."""
    per_epoch = steps_per_epoch(n_examples, batch_size, grad_accum, world_size)
    epoch, within = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    global_batch = batch_size * world_size
    padded = math.ceil(n_examples / global_batch) * global_batch
    if world_size > 1:  # every process needs a full slice: wrap around, as DistributedSampler does
        order = (order * math.ceil(padded / n_examples))[:padded]
    batches = []
    for micro in range(within * grad_accum, min((within + 1) * grad_accum, math.ceil(n_examples / global_batch))):
        chunk = order[micro * global_batch:(micro + 1) * global_batch]
        batches.append(chunk[rank * batch_size:(rank + 1) * batch_size])
    return [b for b in batches if b]
