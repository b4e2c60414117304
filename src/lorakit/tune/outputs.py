"""What ``lorakit tune`` writes from its study: ``trials.csv`` and ``trials.json`` (every trial),
``best.yaml`` (a runnable config with the best values), ``report.md`` (the table, Optuna's
parameter importances and the plots) and ``plots/`` (optimization history, slices, parallel
coordinates and importances, by ``optuna.visualization.matplotlib``). All are written from the
study's storage after every trial, by whichever worker ended it, each atomically."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from ..config import with_values
from ..experiments.report import csv_text
from ..io.atomic import atomic_directory, write_text_atomic
from ..io.json_text import json_text
from .spec import Dimension
from .study import INTERRUPTED, LOST, REASON, UNUSED, WORKER, counted, lost
from .trials import PRUNED_AT, SECONDS

TRIALS_CSV, TRIALS_JSON, BEST_YAML, REPORT, PLOTS = "trials.csv", "trials.json", "best.yaml", "report.md", "plots"
PLOT_FILES = ("history.png", "slice.png", "parallel.png", "importances.png")


def state_of(trial: FrozenTrial) -> str:
    """complete, pruned, failed, interrupted (failed because its process ended, seen on its machine
    or by a database's heartbeat check) or running."""
    if INTERRUPTED in trial.system_attrs or lost(trial):
        return "interrupted"
    return {TrialState.FAIL: "failed"}.get(trial.state, trial.state.name.lower())


def trial_rows(study: optuna.Study, dims: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial (those marked unused aside): its values, metric, state, time and reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if UNUSED in t.system_attrs:
            continue
        worker = t.system_attrs.get(WORKER) or {}
        rows.append({"trial": t.number, "state": state_of(t), "value": t.value,
                     **{d.key: t.params.get(d.key) for d in dims},
                     "steps": t.user_attrs.get("steps"), "pruned_at": t.user_attrs.get(PRUNED_AT),
                     "seconds": t.user_attrs.get(SECONDS), "run_seconds": t.user_attrs.get("run_seconds"),
                     "train_loss": t.user_attrs.get("run_train_loss"),
                     "worker": f"{worker.get('host')}:{worker.get('pid')}" if worker else None,
                     "reason": t.user_attrs.get(REASON) or (LOST if lost(t) else None)})
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = [t for t in counted(study) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    return min(complete, key=lambda t: (sign * t.value, t.number))


def best_config(raw: dict[str, Any], best: FrozenTrial) -> dict[str, Any]:
    """The user's config with the best trial's values: what ``lorakit train`` runs."""
    return with_values(raw, best.params)


def write_outputs(out: Path, study: optuna.Study, dims: list[Dimension], raw: dict[str, Any], about: dict[str, Any],
                  plots: bool) -> None:
    """Every output of the study as it stands (``about``: metric, direction, split, budget, storage);
    the importances and ``plots/`` only with ``plots`` (at the end of a worker's run: they take seconds)."""
    rows = trial_rows(study, dims)
    columns = [*(list(rows[0]) if rows else ["trial", "state", "value", *(d.key for d in dims)]), "scored_on"]
    scored_on = f"{about['metric']} on the {about['split']}"  # the table says which split chose, as every output
    write_text_atomic(out / TRIALS_CSV, csv_text([{**row, "scored_on": scored_on} for row in rows], columns))
    write_text_atomic(out / TRIALS_JSON, json_text({**about, "trials": rows}, indent=2) + "\n")
    best = best_trial(study)
    if best is not None:
        header = (f"# lorakit tune: the best of {about['counted']} trials, trial {best.number}: {about['metric']} "
                  f"{best.value:.6g} on the {about['split']}\n")
        write_text_atomic(out / BEST_YAML, header + yaml.safe_dump(best_config(raw, best), sort_keys=False))
    importances = _importances(study) if plots else {}
    written = write_plots(out / PLOTS, study, scored_on) if plots else []
    write_text_atomic(out / REPORT, report_text(about, rows, best, importances, written))


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (empty where too few trials completed to compute them)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({len(t.params) for t in complete}) != 1:
        return {}
    with warnings.catch_warnings(), contextlib.suppress(ValueError, RuntimeError, ZeroDivisionError):
        warnings.simplefilter("ignore")
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    return {}


def write_plots(folder: Path, study: optuna.Study, scored_on: str) -> list[str]:
    """The study's plots as PNG files in ``folder``, each captioned with what scored the trials
    (``scored_on``: the metric and split); the names written (none before a trial completes)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    makers = {"history.png": views.plot_optimization_history, "slice.png": views.plot_slice,
              "parallel.png": views.plot_parallel_coordinate, "importances.png": views.plot_param_importances}
    if len(complete) < 2:
        makers = {"history.png": makers["history.png"]}
    written = []
    with atomic_directory(folder, owned=PLOT_FILES) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib views are marked experimental
        for name, make in makers.items():
            with contextlib.suppress(ValueError, RuntimeError, ZeroDivisionError):
                axes = make(study)
                figure = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).get_figure()
                figure.set_size_inches(8, 5)
                figure.text(0.5, -0.02, f"trials scored by {scored_on}", ha="center", va="top", fontsize=8,
                            wrap=True)
                figure.savefig(tmp / name, dpi=110, bbox_inches="tight")
                written.append(name)
            plt.close("all")
    return written


def report_text(about: dict[str, Any], rows: list[dict[str, Any]], best: FrozenTrial | None,
                importances: dict[str, float], plots: list[str]) -> str:
    """``report.md``: what was searched and on which split, the best values, every trial, the importances."""
    lines = ["# Tuning report", "",
             f"- metric: `{about['metric']}` ({about['direction']}), measured on the {about['split']}",
             f"- trials: {about['counted']} of {about['budget']} counted ({_states(rows)}); sampler "
             f"{about['sampler']}, pruner {about['pruner']}",
             f"- study: `{about['storage']}`", ""]
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        values = ", ".join(f"`{k}` = {_cell(v)}" for k, v in best.params.items())
        lines += [f"**Best:** trial {best.number}, {about['metric']} {best.value:.6g}: {values}. "
                  f"`{BEST_YAML}` is the config with these values (`lorakit train {BEST_YAML}`).", ""]
    keys = [k for k in (rows[0] if rows else {}) if k not in ("worker", "reason", "train_loss", "run_seconds")]
    ordered = sorted(rows, key=lambda r: (r["value"] is None, _sort_value(r["value"], about["direction"])))
    lines += ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_cell(row[k]) for k in keys) + " |" for row in ordered]
    failed = [r for r in rows if r["reason"]]
    if failed:
        lines += ["", "Trials that did not complete:", ""]
        lines += [f"- trial {r['trial']} ({r['state']}): {r['reason']}" for r in failed]
    if importances:
        lines += ["", "Parameter importances (Optuna's fANOVA; they sum to 1):", ""]
        lines += [f"- `{k}`: {v:.3f}" for k, v in importances.items()]
    if plots:
        lines += ["", *(f"![{name[:-4]}]({PLOTS}/{name})" for name in plots)]
    return "\n".join(lines) + "\n"


def _states(rows: list[dict[str, Any]]) -> str:
    found: dict[str, int] = {}
    for row in rows:
        found[row["state"]] = found.get(row["state"], 0) + 1
    return ", ".join(f"{n} {state}" for state, n in found.items()) or "none yet"


def _sort_value(value: Any, direction: str) -> float:
    if value is None or not math.isfinite(value):
        return 0.0
    return value if direction == "minimize" else -value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
