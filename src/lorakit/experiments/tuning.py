"""``compare.tune``: every run tuned on the validation split before its seeds train.

``compare.tune`` is a tune section (``lorakit.tune``) shared by the runs: the same space, trial
budget, sampler and pruner for each, so every method gets the same search. Each run's study lives
in ``<compare.output_dir>/tune/<run>/`` and trains with the comparison's first seed; a method
option in the space is searched only for the runs whose method has it (LoRA+'s λ for the LoRA+
runs). The run's seeds then train at its best values, and the report says what each run searched,
what it found, what the search cost, and that the evaluation split was not used to choose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import LorakitError
from ..presets import declared_options, parts_of
from .spec import TRAIN_KEYS_SHARED, CompareSpec, Run, run_config

TUNE_DIR = "tune"


def _space(spec: CompareSpec, run: Run, config: RunConfig) -> dict[str, Any]:
    """The part of ``compare.tune.space`` that ``run`` searches: its train keys, and the method
    options its method has."""
    space = spec.tune.get("space") if isinstance(spec.tune.get("space"), dict) else {}
    options = {option.name for option in declared_options(parts_of(config.method_spec()))}
    found = {}
    for key, entry in space.items():
        section, _, name = str(key).partition(".")
        if section not in ("train", "method"):
            raise LorakitError(f"compare.tune.space {key}: the runs of a comparison differ in method and train keys "
                               "only; search other keys with lorakit tune")
        if section == "train" and name in TRAIN_KEYS_SHARED:
            raise LorakitError(f"compare.tune.space {key}: compare sets train.{name} for every run; remove it")
        if section == "train" or name in options:
            found[key] = entry
    return found


def tune_raw(spec: CompareSpec, run: Run, base: RunConfig, out: Path) -> dict[str, Any]:
    """The config ``lorakit tune`` runs for ``run``: its training config (the first seed) with
    ``compare.tune`` as its tune section, in the run's own study folder."""
    config = run_config(base, run, spec.seeds[0], out)
    raw = config.to_dict()
    space = _space(spec, run, config)
    if not space:
        raise LorakitError(f"compare.tune.space searches nothing for run {run.name!r} (its method has none of the "
                           "method options given); add a train key such as train.lr")
    tune = {**spec.tune, "space": space, "output_dir": str(out / TUNE_DIR / run.slug)}
    return {**raw, "tune": tune}


def check_tuning(spec: CompareSpec, runs: list[Run], base: RunConfig) -> None:
    """Every run's search checked (space against its method, metric, validation split) before any
    model loads, and their budgets equal."""
    from ..tune.run import Plan
    from ..tune.spec import split_tune

    budgets = {}
    for run in runs:
        raw, section = split_tune(tune_raw(spec, run, base, Path(spec.output_dir)), [])
        budgets[run.name] = Plan.make(raw, section).budget
    if len(set(budgets.values())) > 1:  # a grid's size follows the options each method has
        sizes = ", ".join(f"{name} {count}" for name, count in budgets.items())
        raise LorakitError(f"compare.tune would give the runs different trial budgets ({sizes} trials): each run "
                           "searches its own grid; use sampler tpe or random, or a space every run searches alike")


def tune_runs(spec: CompareSpec, runs: list[Run], base: RunConfig, progress: bool) -> tuple[list[Run], list[dict]]:
    """Each run tuned (or its finished study read again); the runs at their best values, and what
    each search found and cost."""
    from ..tune import tune

    tuned, found = [], []
    for run in runs:
        result = tune(tune_raw(spec, run, base, Path(spec.output_dir)), progress=progress)
        if result["best"] is None:
            raise LorakitError(f"no trial of run {run.name!r} completed (see {result['output_dir']}/report.md); "
                               "widen compare.tune.space or lower its learning rates")
        method, train = dict(run.method), dict(run.train)
        for key, value in result["best"].items():
            section, _, name = key.partition(".")
            (method if section == "method" else train)[name] = value
        tuned.append(Run(run.name, method, train))
        trials = json.loads((Path(result["output_dir"]) / "trials.json").read_text())["trials"]
        found.append({"run": run.name, "best": result["best"], "value": result["best_value"],
                      "trials": len(trials), "seconds": round(sum(t["seconds"] or 0 for t in trials), 1),
                      "metric": result["metric"], "split": result["split"], "study": result["output_dir"]})
    return tuned, found


def tuning_lines(found: list[dict[str, Any]]) -> list[str]:
    """The report's tuning section."""
    if not found:
        return []
    first = found[0]
    lines = ["", "## Tuning", "",
             f"Each run was tuned before its seeds trained, scored by {first['metric']} in {first['trials']} "
             f"trials on the {first['split']}. The seeds then trained at the best values.", "",
             "| run | tuned values | best (validation) | trials | tuning seconds | study |",
             "| --- | --- | --- | --- | --- | --- |"]
    for item in found:
        values = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in item["best"].items())
        lines.append(f"| {item['run']} | {values} | {item['value']:.4g} | {item['trials']} | {item['seconds']:.0f} | "
                     f"`{item['study']}` |")
    return lines
