"""BLEU/ROUGE of the argmax of teacher-forced logits against the response tokens.

With the reference fed as input, position ``t`` predicts token ``t+1``: the prediction is
``ŷ_t = argmax logits[t]`` and its reference is ``labels[t+1]``, kept only where
``labels[t+1] ≠ -100`` (prompt and padding excluded) — the same pairs the loss uses. Each
example's kept predictions and references are decoded and scored as text (``tf_*`` metrics).
The OLoRA+ paper scored the argmax of teacher-forced logits too; without the shift each
prediction would face the token it was fed rather than the one it predicts, and without the
mask the prompt and padding would count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import LorakitError
from ..status import bar
from .generation import model_device
from .loss import IGNORE
from .metrics import text_scores


def teacher_forced_texts(model: nn.Module, tokenizer: Any, examples: Sequence[dict[str, Any]],
                         collate: Callable, batch_size: int) -> tuple[list[str], list[str]]:
    """``(predictions, references)``: per example, the decoded shifted argmax and response labels."""
    if batch_size < 1:
        raise LorakitError(f"batch_size must be >= 1 (got {batch_size}); pass a positive batch size")
    device = model_device(model)
    predictions: list[str] = []
    references: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in bar(range(0, len(examples), batch_size), desc="teacher-forced", unit="batch", leave=False):
                batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                predicted = logits[:, :-1].argmax(dim=-1)  # ŷ_t for t = 0..T-2
                targets = batch["labels"][:, 1:]           # its reference, labels[t+1]
                keep = targets != IGNORE
                for row_pred, row_ref, row_keep in zip(predicted, targets, keep):
                    predictions.append(tokenizer.decode(row_pred[row_keep].tolist(),
                                                        skip_special_tokens=True).strip())
                    references.append(tokenizer.decode(row_ref[row_keep].tolist(),
                                                       skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return predictions, references


def teacher_forced_scores(model: nn.Module, tokenizer: Any, examples: Sequence[dict[str, Any]],
                          collate: Callable, batch_size: int) -> dict[str, float]:
    """``tf_bleu`` and ``tf_rouge1/2/L`` of the teacher-forced argmax over ``examples``."""
    predictions, references = teacher_forced_texts(model, tokenizer, examples, collate, batch_size)
    return text_scores(predictions, references, prefix="tf_")
