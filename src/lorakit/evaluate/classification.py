"""Sequence classification and regression: the loss of a batch, predictions, and scores.

The loss of a batch is summed over its rows: cross-entropy ``−log softmax(z)_y`` of the logits
``z`` for classes, squared error ``(z − y)²`` for regression (one output); ``eval_loss`` is its
mean over the evaluation rows. The scores are scikit-learn's and SciPy's, on the argmax class
``ŷ`` (or the output, for regression):

- ``accuracy`` = the share of rows with ``ŷ = y``;
- ``f1``: binary F1 = ``2PR / (P + R)`` with class 1 positive (2 classes only);
  ``f1_macro``: the unweighted mean of the F1 of every class that is a label or a prediction of
  the evaluation set (a class absent from both does not count as 0);
- ``mcc``: Matthews' correlation ``(TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN))``, in its
  multi-class form (Gorodkin's R_K) for more classes; 0 when a prediction or label is constant;
- ``pearson`` / ``spearman``: the linear and rank correlations of outputs and targets.

``predictions.jsonl`` holds one line per evaluation record: its text(s), label, prediction
and (classes) the predicted probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LorakitError
from ..io.atomic import write_text_atomic
from ..io.json_text import json_text
from ..status import bar
from .loss import eval_mode

PREDICTIONS_FILE = "predictions.jsonl"


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs of a batch (everything but ``labels``: the loss is computed here)."""
    return {key: value for key, value in batch.items() if key != "labels"}


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's loss: cross-entropy for class ids, squared error for float targets."""
    if labels.is_floating_point():
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="none")
    return F.cross_entropy(logits.float(), labels, reduction="none")


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The summed loss of a batch's rows."""
    return row_losses(model(**model_inputs(batch)).logits, batch["labels"]).sum()


@torch.no_grad()
def predict(model: nn.Module, examples: Sequence[dict[str, Any]], collate: Callable, batch_size: int,
            device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 CPU logits of every example, and its label, in order (evaluation mode)."""
    logits, labels = [], []
    with eval_mode(model):
        for start in bar(range(0, len(examples), batch_size), desc="predict", unit="batch", leave=False):
            batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
            logits.append(model(**model_inputs(batch)).logits.float().cpu())
            labels.append(batch["labels"].cpu())
    return torch.cat(logits), torch.cat(labels)


def scores(logits: torch.Tensor, labels: torch.Tensor, metrics: Sequence[str]) -> dict[str, float]:
    """``eval_loss`` and the named scores of the predictions (see the module docstring)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"eval_loss": float(row_losses(logits, labels).mean())}
    if labels.is_floating_point():
        predicted, truth = logits.squeeze(-1).double().numpy(), labels.double().numpy()
        constant = len(set(predicted.tolist())) < 2 or len(set(truth.tolist())) < 2
        correlations = {"pearson": lambda: pearsonr(predicted, truth)[0],
                        "spearman": lambda: spearmanr(predicted, truth)[0]}
        out.update({name: 0.0 if constant else float(f()) for name, f in correlations.items() if name in metrics})
        return out
    predicted, truth = logits.argmax(-1).numpy(), labels.numpy()
    if "f1" in metrics and logits.shape[-1] != 2:
        raise LorakitError(f"eval.metrics f1 is binary F1, but the task has {logits.shape[-1]} classes; use f1_macro")
    found = {"accuracy": lambda: accuracy_score(truth, predicted),
             "f1": lambda: f1_score(truth, predicted, average="binary", pos_label=1, zero_division=0),
             "f1_macro": lambda: f1_score(truth, predicted, average="macro", zero_division=0),
             "mcc": lambda: matthews_corrcoef(truth, predicted)}
    out.update({name: float(f()) for name, f in found.items() if name in metrics})
    return out


def write_predictions(path: Path, records: Sequence[dict[str, Any]], logits: torch.Tensor,
                      label_names: Sequence[str] | None) -> None:
    """``predictions.jsonl`` (atomically): each record with its prediction."""
    lines = []
    for record, row in zip(records, logits):
        line = {key: record[key] for key in ("text", "text_pair", "label") if key in record}
        if label_names is None:
            line["prediction"] = float(row[0])
        else:
            probabilities = row.softmax(-1)
            line["prediction"] = label_names[int(probabilities.argmax())]
            line["probabilities"] = {name: round(float(p), 6) for name, p in zip(label_names, probabilities)}
        lines.append(json_text(line, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def classification_scores(model: nn.Module, records: Sequence[dict[str, Any]],
                          examples: Sequence[dict[str, Any]], collate: Callable, batch_size: int,
                          metrics: Sequence[str], out_dir: Path | None = None) -> dict[str, float]:
    """The scores ``metrics`` of ``model`` on the evaluation ``examples`` (encoded ``records``);
    with ``out_dir``, ``predictions.jsonl`` is written there."""
    device = next(model.parameters()).device
    logits, labels = predict(model, examples, collate, batch_size, device)
    if out_dir is not None:
        id2label = model.config.id2label
        names = None if labels.is_floating_point() else [str(id2label[i]) for i in range(logits.shape[-1])]
        write_predictions(out_dir / PREDICTIONS_FILE, records, logits, names)
    return scores(logits, labels, metrics)
