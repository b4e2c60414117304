"""The deterministic order in which training examples are seen.

Epoch ``e`` uses the permutation ``randperm(n, generator=seed·1000003 + e)``; it is cut into
micro-batches of ``batch_size × world_size`` examples (each process takes its slice) and groups
of ``grad_accum`` micro-batches form one optimizer step. The position in the data is therefore
just the global step, and a resumed run sees exactly the batches the uninterrupted run would.

With ``lengths`` (``data.group_by_length``) the permutation is cut into groups of
``GROUP_STEPS`` optimizer steps' examples, each group sorted by length (longest first) so that a
micro-batch holds examples of similar length and pads little, and the group's micro-batches are
then shuffled with the same generator: which examples share a step changes, the loss of each does
not (padding is masked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GROUP_STEPS = 8


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world_size: int = 1) -> int:
    """Optimizer steps in one pass over ``n_examples``."""
    micro_batches = math.ceil(n_examples / (batch_size * world_size))
    return math.ceil(micro_batches / grad_accum)


def step_batches(step: int, n_examples: int, batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """The example indices of this process's micro-batches for optimizer step ``step``."""
    per_epoch = steps_per_epoch(n_examples, batch_size, grad_accum, world_size)
    epoch, within = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    global_batch = batch_size * world_size
    if lengths is not None:
        order = grouped_by_length(order, lengths, global_batch, global_batch * grad_accum * GROUP_STEPS, generator)
    padded = math.ceil(n_examples / global_batch) * global_batch
    if world_size > 1:  # every process needs a full slice: wrap around, as DistributedSampler does
        order = (order * math.ceil(padded / n_examples))[:padded]
    batches = []
    for micro in range(within * grad_accum, min((within + 1) * grad_accum, math.ceil(n_examples / global_batch))):
        chunk = order[micro * global_batch:(micro + 1) * global_batch]
        batches.append(chunk[rank * batch_size:(rank + 1) * batch_size])
    return [b for b in batches if b]


def grouped_by_length(order: list[int], lengths: Sequence[int], batch: int, group: int,
                      generator: torch.Generator) -> list[int]:
    """``order`` with every ``group`` consecutive indices sorted by length (longest first), and the
    full micro-batches (of ``batch``) within each group shuffled (a last, partial one stays last, so
    that no other micro-batch is cut across its boundary)."""
    result = []
    for start in range(0, len(order), group):
        ranked = sorted(order[start:start + group], key=lambda i: -lengths[i])
        full = len(ranked) // batch
        micro = [ranked[i * batch:(i + 1) * batch] for i in range(full)]
        result += [i for j in torch.randperm(full, generator=generator).tolist() for i in micro[j]]
        result += ranked[full * batch:]
    return result
