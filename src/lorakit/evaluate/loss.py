"""Token-level cross-entropy on response tokens, and eval loss / perplexity over a split.

The loss of a batch is ``Σ_t CE(logits_t, label_{t+1})`` over positions whose next-token
label is not ``-100`` (prompt and padding are excluded); averages are token-weighted, so a
long response counts by its length, not as one example.

**Loss-position logits** (``train.sparse_logits``, ``LossLogits``). Only the positions ``t`` in
that sum need ``logits_t = W_out h_t``. A forward pre-hook on the model's output layer hands it
``h_t`` of those positions alone, so the vocabulary projection, its backward and the logits'
memory shrink from every token to the loss tokens — from ``B·T·V`` numbers to ``N·V`` with ``N``
the response tokens (prompts, padding and packing's separators cost nothing). The loss terms are
the same ones, so the loss and every gradient equal the full projection's (up to float rounding
of the smaller matmul): the positions left out carry no loss, and neither their logits nor ``W_out``
get a gradient from them. Architectures that post-process the logits element-wise (soft-capping,
a logit scale) work unchanged; one that reshapes them is refused with its name.
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
from ..errors import LorakitError
from ..status import bar

IGNORE = -100


def label_tokens(labels: torch.Tensor) -> int:
    """The number of positions that carry a loss (labels shifted by one)."""
    return int((labels[:, 1:] != IGNORE).sum())


class LossLogits:
    """Logits at the loss positions only (see the module docstring): owns a forward pre-hook on
    ``model``'s output layer (``get_output_embeddings()``), which passes through unchanged outside
    ``at``. One per model; the hook stays (a compiled model keeps one graph) and moves to a new
    output layer if the model gets one (a schedule removed an adapter from it)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layer: nn.Module | None = None
        self.handle: Any = None
        self.keep: torch.Tensor | None = None  # (B, T) of the current forward
        self.index: torch.Tensor | None = None  # its flat (row·T + t) positions

    @torch.compiler.disable  # runs eagerly: a compiled model would otherwise specialise on the sizes it reads
    def _select(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.keep is None:
            return None
        hidden = args[0]
        if hidden.shape[:-1] != self.keep.shape:  # not the batch's (row, position) grid: no safe selection
            raise LorakitError(f"the output layer got hidden states of shape {tuple(hidden.shape)}, not one per "
                               f"position of the batch {tuple(self.keep.shape)}; set train.sparse_logits: false")
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.index), *args[1:])

    @contextlib.contextmanager
    def at(self, keep: torch.Tensor) -> Iterator[int]:
        """Inside the block the output layer sees only the positions where ``keep`` (B, T) is true;
        yields their number."""
        layer = self.model.get_output_embeddings()
        if layer is not self.layer:
            if self.handle is not None:
                self.handle.remove()
            self.layer, self.handle = layer, layer.register_forward_pre_hook(self._select)
        self.keep, self.index = keep, keep.reshape(-1).nonzero().squeeze(1)
        try:
            yield self.index.numel()
        finally:
            self.keep = self.index = None


def loss_scores(model: nn.Module, batch: dict[str, torch.Tensor], logits: LossLogits | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, keep)``: the logits ``(N, V)`` of the ``N`` positions whose next token is
    labelled, in row-major order, and ``keep`` (B, T-1), where they are. With ``logits`` the
    vocabulary projection runs at those positions alone (see the module docstring)."""
    keep = batch["labels"][:, 1:] != IGNORE
    if logits is None:
        return model(**model_inputs(batch)).logits[:, :-1][keep], keep
    with logits.at(F.pad(keep, (0, 1))) as count:  # position t predicts label t+1; the last predicts nothing
        scores = model(**model_inputs(batch)).logits
    if scores.shape[:-1] != (count,):
        raise LorakitError(f"the model reshapes its logits after the output layer (to {tuple(scores.shape)}), so "
                           "they cannot be computed at the loss positions alone; set train.sparse_logits: false")
    return scores, keep


def token_loss(model: nn.Module, batch: dict[str, torch.Tensor], logits: LossLogits | None = None) -> torch.Tensor:
    """Sum of next-token cross-entropy over the batch's response tokens (a padded batch, or packed
    rows with ``position_ids``, see ``lorakit.data.packing``); ``logits``: see ``loss_scores``."""
    scores, keep = loss_scores(model, batch, logits)
    return F.cross_entropy(scores.float(), batch["labels"][:, 1:][keep], reduction="sum")


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
                  batch_size: int, device: torch.device | str, logits: LossLogits | None = None) -> dict[str, float]:
    """``eval_loss`` (token-weighted mean CE) and ``eval_ppl = exp(eval_loss)`` over ``examples``
    (``logits``: see ``token_loss``)."""
    total, tokens = 0.0, 0
    with eval_mode(model):
        for start in bar(range(0, len(examples), batch_size), desc="eval loss", unit="batch", leave=False):
            batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
            total += float(token_loss(model, batch, logits))
            tokens += label_tokens(batch["labels"])
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": tokens}
