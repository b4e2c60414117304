"""The final evaluation of a run: the metrics its config asks for, in one call.

Classification and regression: scores of the predicted labels (``classification``). Causal LMs:
loss metrics come from teacher forcing on response tokens; BLEU / ROUGE from greedy
generations (saved next to the scores as ``generations.jsonl``); the ``tf_*`` metrics from the
argmax of teacher-forced logits, reported under their own names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..config import RunConfig
from ..status import phase
from .classification import classification_scores
from .generation import generation_scores
from .loss import evaluate_loss
from .metrics import GENERATION_METRICS, LOSS_METRICS, TEACHER_FORCED_METRICS
from .teacher_forced import teacher_forced_scores

GENERATIONS_FILE = "generations.jsonl"


def evaluate_run(model: nn.Module, tokenizer: Any, config: RunConfig, records: Sequence[dict[str, str]],
                 examples: Sequence[dict[str, Any]], collate: Callable,
                 out_dir: Path | None = None, split: str = "eval split") -> dict[str, float]:
    """The metrics of ``config.eval`` on a split (``records`` and their encoded ``examples``),
    each part a phase with its status line naming ``split``."""
    if config.task.type != "causal_lm":
        with phase("evaluate", f"scoring the {split}'s {len(records)} records"):
            return classification_scores(model, records, examples, collate, config.train.eval_batch_size,
                                         config.eval.metrics, out_dir)
    wanted = set(config.eval.metrics)
    device = next(model.parameters()).device
    results: dict[str, float] = {}
    if wanted & set(LOSS_METRICS):
        with phase("evaluate", f"evaluating the loss on the {split}'s {len(examples)} records"):
            results.update(evaluate_loss(model, examples, collate, config.train.eval_batch_size, device))
    if wanted & set(GENERATION_METRICS):
        subset = list(records[: config.eval.generate_size or len(records)])
        out_path = out_dir / GENERATIONS_FILE if out_dir is not None else None
        with phase("generate", f"generating {len(subset)} answers of the {split} (greedy, up to "
                   f"{config.eval.max_new_tokens} tokens each) for BLEU/ROUGE"):
            results.update(generation_scores(model, tokenizer, subset, config.data.template, config.data.max_length,
                                             config.eval.max_new_tokens, config.eval.generate_batch_size, out_path))
    if wanted & set(TEACHER_FORCED_METRICS):
        with phase("evaluate", f"evaluating teacher-forced predictions on the {split}'s {len(examples)} records"):
            results.update(teacher_forced_scores(model, tokenizer, examples, collate, config.train.eval_batch_size))
    keep = wanted | {"eval_tokens"}
    return {k: v for k, v in results.items() if k in keep}
