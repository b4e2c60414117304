"""What a training step minimises (``train.objective``, ``task.type``): next-token cross-entropy,
DPO, or a label per row.

**sft** — the sum of the response tokens' cross-entropies; a step divides it by the step's number
of response tokens (its *units*), so accumulation and data parallelism equal one large batch.

**dpo** — Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290). For a pair
``(x, y_w, y_l)`` with ``log π(y | x)`` the summed log-probability of the answer's tokens,

    ``m = β · [(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))]``,
    ``L = −log σ(m)``,

summed over pairs and divided by the step's number of pairs. ``π_ref`` is the model before
training, computed by the same model inside ``adapter.original()`` — exactly the original base
for every preset (for OLoRA/PiSSA the residual plus ``s·B₀A₀``, for Delta-LoRA with the moved
``W`` undone), with no second model in memory, and without dropout. At step 0 the policy is the
original model, so with dropout off (``method.dropout: 0``, or in evaluation) ``m = 0`` and
``L = log 2`` for every preset. Reported with it: the reward accuracy (the share of
pairs with ``m > 0``) and the mean margin ``m``.

**classification / regression** (``task.type``) — each row's cross-entropy against its class (or
squared error against its number, ``lorakit.evaluate.classification``), summed over rows and
divided by the step's number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import Adapter
from ..config import OBJECTIVES
from ..evaluate import classification
from ..evaluate.loss import LossLogits, eval_mode, evaluate_loss, label_tokens, loss_scores, token_loss

GRPO_METRICS = ("eval_reward",)  # lorakit.train.grpo's final metric (that module builds on this one)

__all__ = ["OBJECTIVES", "Dpo", "Labelled", "NextToken", "Objective", "objective_for", "objective_metrics",
           "sequence_logps"]


class Objective:
    """A step's loss as a sum over *units* (tokens, pairs), divided by the step's units."""

    name: ClassVar[str]
    final_metrics: ClassVar[bool] = False  # its evaluate adds to the run's final metrics (DPO's preferences)
    metrics: ClassVar[tuple[str, ...]] = ()  # the metrics it adds so

    def begin_step(self, step: int) -> None:
        """Called before step ``step`` (0-based) computes its loss (GRPO seeds its sampling from it)."""

    def step_metrics(self) -> dict[str, float]:
        """What the objective measured in the last step, for the log records (GRPO's rewards, KL)."""
        return {}

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, examples: Sequence[Any], collate: Callable, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        raise NotImplementedError


class NextToken(Objective):
    """Cross-entropy of the response tokens (``lorakit.evaluate.loss``)."""

    name = "sft"

    def __init__(self, logits: LossLogits | None = None) -> None:
        self.logits = logits  # the vocabulary projection at the loss positions alone (train.sparse_logits)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return label_tokens(batch["labels"])

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_loss(model, batch, self.logits)

    def evaluate(self, model: nn.Module, examples: Sequence[Any], collate: Callable, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        return evaluate_loss(model, examples, collate, batch_size, device, self.logits)


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor], logits: LossLogits | None = None
                   ) -> torch.Tensor:
    """``log π(answer | prompt)`` of every row: the labelled tokens' log-probabilities, summed
    (``logits``: see ``lorakit.evaluate.loss.loss_scores``)."""
    scores, keep = loss_scores(model, batch, logits)
    token_logps = -F.cross_entropy(scores.float(), batch["labels"][:, 1:][keep], reduction="none")
    per_position = token_logps.new_zeros(keep.shape)
    per_position[keep] = token_logps  # each position written once: a deterministic sum, also on CUDA
    return per_position.sum(dim=1)


class Dpo(Objective):
    """DPO against ``adapter.original()`` (see the module docstring); batches are ``PairCollator``'s."""

    name = "dpo"
    final_metrics = True
    metrics = ("eval_dpo_loss", "eval_reward_accuracy", "eval_reward_margin")

    def __init__(self, adapter: Adapter, beta: float, logits: LossLogits | None = None) -> None:
        self.adapter, self.beta, self.logits = adapter, beta, logits

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def margins(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``m`` of every pair of the batch (the policy's part differentiable)."""
        with torch.no_grad(), self.adapter.original(), eval_mode(model):  # the reference draws no dropout
            reference = sequence_logps(model, batch, self.logits)
        policy = sequence_logps(model, batch, self.logits)
        chosen, rejected = (policy - reference).chunk(2)
        return self.beta * (chosen - rejected)

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -F.logsigmoid(self.margins(model, batch)).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: Sequence[Any], collate: Callable, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        """``eval_dpo_loss``, ``eval_reward_accuracy`` and ``eval_reward_margin`` over the pairs."""
        with eval_mode(model):
            margins = [self.margins(model, {k: v.to(device) for k, v in collate(examples[i:i + batch_size]).items()})
                       for i in range(0, len(examples), batch_size)]
        m = torch.cat(margins).double() if margins else torch.zeros(0, dtype=torch.float64)
        count = max(m.numel(), 1)
        return {"eval_dpo_loss": float(-F.logsigmoid(m).sum()) / count if m.numel() else math.nan,
                "eval_reward_accuracy": float((m > 0).sum()) / count,
                "eval_reward_margin": float(m.sum()) / count}


class Labelled(Objective):
    """A label per row: cross-entropy for classes, squared error for regression targets."""

    name = "labelled"

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["labels"].shape[0]

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return classification.batch_loss(model, batch)

    def evaluate(self, model: nn.Module, examples: Sequence[Any], collate: Callable, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        """``eval_loss`` and ``accuracy`` (classes) or ``pearson`` (regression): the curves' metrics."""
        logits, labels = classification.predict(model, examples, collate, batch_size, device)
        return classification.scores(logits, labels, ("pearson",) if labels.is_floating_point() else ("accuracy",))


def objective_metrics(name: str) -> tuple[str, ...]:
    """The metrics train.objective ``name`` adds to a run's own (``eval.metrics``)."""
    return {"dpo": Dpo.metrics, "grpo": GRPO_METRICS}.get(name, ())


def objective_for(name: str, adapter: Adapter, beta: float, task: str = "causal_lm",
                  sparse_logits: nn.Module | None = None) -> Objective:
    """The objective ``train.objective`` names for ``task``, for ``adapter``; with ``sparse_logits``
    (the model, unwrapped), a causal LM's logits are computed at the loss positions alone (``LossLogits``)."""
    if task != "causal_lm":
        return Labelled()
    logits = LossLogits(sparse_logits) if sparse_logits is not None else None
    return Dpo(adapter, beta, logits) if name == "dpo" else NextToken(logits)
