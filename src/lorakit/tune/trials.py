"""One trial of ``lorakit tune``: its values, its config, its training run and what it reports.

A trial trains ``trials/trial-NNNN/`` with the study's values on the training records and is
scored on the validation split; each ``train.eval_every`` its metric goes to the pruner, which may
stop it. A trial that diverges, or fails in any other way, is recorded as failed with its reason,
and the study goes on (``Trials`` is the objective of Optuna's ``optimize``). The trials of one
process share the loaded base model: each trains a deep copy (a fresh adapter and optimizer),
and the base's bytes are verified unchanged after each.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import Trial
from torch import nn

from ..errors import LorakitError
from ..evaluate.metrics import GENERATION_METRICS, METRICS
from ..loading import labels_of, load_base, load_split
from ..train import train
from ..train.data_order import steps_per_epoch
from ..train.loop import StepInfo
from .spec import ON_VALIDATION, Dimension, trial_config
from .study import INTERRUPTED, REASON, WORKER, worker

TRIALS_DIR = "trials"
PRUNED_AT, SECONDS = "pruned_at", "seconds"
RUN_PHASES = ("train", "evaluate", "generate", "save")  # a trial's run_seconds; the rest is the tuner's overhead


def suggest(trial: Trial, dims: list[Dimension]) -> dict[str, Any]:
    """The trial's value of every searched key, drawn by the study's sampler."""
    values = {}
    for d in dims:
        if d.choices is not None:
            values[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        elif d.kind is int:
            values[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            values[d.key] = trial.suggest_float(d.key, d.low, d.high, step=d.step, log=d.log)
    return values


def base_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names and bytes): the base a trial must leave as it was."""
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Trials:
    """Runs the study's trials in this process.

    Args:
        raw: the user's config, without its tune section.
        dims: the searched keys.
        metric: what a trial is scored by.
        out: the study's folder (trials train in ``out/trials/trial-NNNN``).
        pruning: whether the study has a pruner (then trials evaluate at least four times).
    """

    raw: dict[str, Any]
    dims: list[Dimension]
    metric: str
    out: Path
    pruning: bool
    base: tuple[nn.Module, Any] | None = None
    base_key: str | None = None
    digest: str | None = None

    def __call__(self, trial: Trial) -> float:
        """Run ``trial`` (Optuna's objective): its metric. A pruned trial raises ``TrialPruned``;
        a failed one records its reason and raises (the study marks it failed and goes on)."""
        trial.study._storage.set_trial_system_attr(trial._trial_id, WORKER, worker())  # whose trial it is
        began = time.perf_counter()
        try:
            return self._train(trial)
        except optuna.TrialPruned:
            reported = trial.study._storage.get_trial(trial._trial_id).intermediate_values
            trial.set_user_attr(PRUNED_AT, max(reported) if reported else None)
            raise
        except KeyboardInterrupt:  # not a result: the trial is replaced when the study goes on
            trial.study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED, True)
            trial.set_user_attr(REASON, "interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            trial.set_user_attr(REASON, _reason(exc))
            raise
        finally:
            trial.set_user_attr(SECONDS, round(time.perf_counter() - began, 3))

    def _train(self, trial: Trial) -> float:
        """Train the trial; its metric (after recording what the run reported)."""
        config = self._config(trial.number, suggest(trial, self.dims))
        split = load_split(config)
        steps = config.train.max_steps or steps_per_epoch(len(split[0]), config.train.batch_size,
                                                          config.train.grad_accum, 1) * config.train.epochs
        if self.pruning and config.train.eval_every is None:  # the pruner needs evaluations on the way
            config.train.eval_every = max(1, steps // 4)
        trial.set_user_attr("steps", steps)
        summary = train(config, callbacks=[Reporter(trial, self.metric)], progress=False,
                        base=self._base_for(config, split))
        for name in ("eval_loss", "train_loss", "seconds_per_step"):
            if isinstance(summary.get(name), (int, float)):
                trial.set_user_attr(f"run_{name}", summary[name])
        phases = summary.get("phase_seconds") or {}  # the run's own work: its steps, evaluations and checkpoints
        trial.set_user_attr("run_seconds", round(sum(phases.get(name, 0.0) for name in RUN_PHASES), 3))
        value = summary.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LorakitError(f"the trial's {self.metric} is {value!r}, not a finite number")
        return float(value)

    def _config(self, number: int, values: dict[str, Any]) -> Any:
        """The trial's config: the user's with the trial's values, trained into its own folder,
        measured on the validation split, with only the final checkpoint, no trackers, no
        evaluation before the first step and no generation unless the study is scored by a
        generation metric (the same for every trial)."""
        folder = self.out / TRIALS_DIR / f"trial-{number:04d}"
        settings = {**ON_VALIDATION, "train.output_dir": str(folder), "train.save_every": None,
                    "train.report_to": ["none"], "train.eval_at_start": False}
        config = trial_config(self.raw, values, **settings)
        if self.metric not in GENERATION_METRICS:  # generating would only cost time
            kept = [m for m in config.eval.metrics if m not in GENERATION_METRICS]
            if self.metric in METRICS and self.metric not in kept:  # the study's metric, listed or not
                kept.append(self.metric)
            config.eval.metrics = tuple(kept)
        return config

    def _base_for(self, config: Any, split: Any) -> tuple[nn.Module, Any]:
        """The loaded base for ``config``'s model section and classes (loaded again only where they change)."""
        labels = labels_of(config, split)
        wanted = repr((sorted(config.to_dict()["model"].items()), labels))
        if wanted != self.base_key:
            self.base, self.base_key = None, None  # the old base goes before the new one loads
            self.base = load_base(config, labels=labels)
            self.base_key, self.digest = wanted, base_digest(self.base[0])
        return self.base

    def verify_base(self) -> None:
        """Stop the study (outside Optuna's ``optimize``, which would record the error as one
        failed trial and go on) if the last trial changed the shared base's weights."""
        if self.base is not None and base_digest(self.base[0]) != self.digest:
            raise RuntimeError("a trial changed the shared base model's weights; the study stops here (this is a "
                               "lorakit bug: trials train a copy)")


class Reporter:
    """A training callback: the trial's metric at each evaluation goes to the pruner."""

    def __init__(self, trial: Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def __call__(self, info: StepInfo) -> None:
        value = info.metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, info.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {info.step}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(exc, LorakitError) else f"{type(exc).__name__}: {line}".rstrip(": ")
