"""Packing: several examples in one row of at most ``max_length`` tokens, with no attention across
them.

Rows are filled greedily in order: an example goes into the current row while it fits, else it
starts the next row (an example is never split; one longer than ``max_length`` was already cut by
the encoder). Positions restart at 0 for every example (``position_ids``), and the model is called
without an attention mask, so transformers (4.54 and later) builds a block-diagonal causal mask
from the positions, with SDPA and eager attention (lorakit's default; ``loading.check_packing``
refuses older transformers, and LoRA-drop, whose importance needs the attention mask). The first label of
every example is dropped: unpacked it is never a target either (labels shift by one), packed it
would be predicted from the previous example's last token. So a packed batch has exactly the loss
terms, and the gradients, of the same examples unpacked.

The rows of a batch are right-padded to the longest with pad tokens that form a block of their own
(positions from 0, no labels): no real token attends to them.

**Padding-free batches** (``data.padding_free``, ``FlatCollator``): the micro-batch's examples — or
its packed rows — joined into one row by the same rule, so a batch holds no padding at all and
has the same loss terms as the padded batch of the same examples. With a variable-length
attention kernel (``model.attention: flash_attention_2``, which transformers gives the block
boundaries from the positions) attention costs what the examples' own blocks cost; the dense
kernels (sdpa, eager) apply a block-diagonal mask over the whole row instead, exact but
quadratic in the row's length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import LorakitError
from .tokens import IGNORE_INDEX, Encoded


def pack(examples: Sequence[Mapping[str, Sequence[int]]], max_length: int) -> list[Encoded]:
    """The examples packed into rows of at most ``max_length`` tokens (see the module docstring);
    an example that is itself a packed row keeps its ``position_ids``."""
    rows: list[Encoded] = []
    row: Encoded = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        size = len(example["input_ids"])
        if size > max_length:
            raise LorakitError(f"an example of {size} tokens is longer than the packed row ({max_length})")
        if row["input_ids"] and len(row["input_ids"]) + size > max_length:
            rows.append(row)
            row = {"input_ids": [], "labels": [], "position_ids": []}
        row["input_ids"] += example["input_ids"]
        row["labels"] += [IGNORE_INDEX, *example["labels"][1:]]
        row["position_ids"] += example.get("position_ids", range(size))
    if row["input_ids"]:
        rows.append(row)
    return rows


class PackedCollator:
    """Right-pads packed rows into LongTensors ``input_ids``, ``position_ids``, ``labels`` (no
    ``attention_mask``: the positions define the blocks)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, batch: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise LorakitError("cannot collate an empty batch; pass at least one packed row")
        width = max(len(row["input_ids"]) for row in batch)
        columns: dict[str, list[list[int]]] = {"input_ids": [], "position_ids": [], "labels": []}
        for row in batch:
            pad = width - len(row["input_ids"])
            columns["input_ids"].append([*row["input_ids"], *[self.pad_id] * pad])
            columns["position_ids"].append([*row["position_ids"], *range(pad)])
            columns["labels"].append([*row["labels"], *[IGNORE_INDEX] * pad])
        return {key: torch.tensor(value, dtype=torch.long) for key, value in columns.items()}


class FlatCollator:
    """A micro-batch as one row ``(1, Σ lengths)``: ``input_ids``, ``position_ids`` (restarting at
    every example, or kept from packed rows) and ``labels`` (each example's first label dropped,
    as in ``pack``); no padding, no ``attention_mask``."""

    def __call__(self, batch: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise LorakitError("cannot collate an empty batch; pass at least one example")
        (row,) = pack(batch, sum(len(example["input_ids"]) for example in batch))
        return {key: torch.tensor([value], dtype=torch.long) for key, value in row.items()}


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the model's forward for a batch, packed or padded (no cache: the
    packed block mask is built only without one)."""
    return {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch} | {
        "use_cache": False}
