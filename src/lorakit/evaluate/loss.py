"""Token-level cross-entropy on response tokens, and eval loss / perplexity over a split.

The loss of a batch is ``Σ_t CE(logits_t, label_{t+1})`` over positions whose next-token
label is not ``-100`` (prompt and padding are excluded); averages are token-weighted, so a
long response counts by its length, not as one example.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.packing import model_inputs

IGNORE = -100


def label_tokens(labels: torch.Tensor) -> int:
    """The number of positions that carry a loss (labels shifted by one)."""
    return int((labels[:, 1:] != IGNORE).sum())


def token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over the batch's response tokens (a padded batch, or packed
    rows with ``position_ids``, see ``lorakit.data.packing``)."""
    logits = model(**model_inputs(batch)).logits
    shifted = logits[:, :-1].float()
    return F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction="sum",
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in evaluation mode inside the block (no dropout), its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_loss(model: nn.Module, examples: Sequence[dict[str, Any]], collate: Callable,
                  batch_size: int, device: torch.device | str) -> dict[str, float]:
    """``eval_loss`` (token-weighted mean CE) and ``eval_ppl = exp(eval_loss)`` over ``examples``."""
    total, tokens = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
            total += float(token_loss(model, batch))
            tokens += label_tokens(batch["labels"])
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": tokens}
