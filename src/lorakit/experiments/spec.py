"""The compare config: a training config plus a ``compare`` section, checked up front.

A compare config is a training config (``model``, ``method`` defaults shared by every run,
``data``, ``train``, ``eval``) plus ``compare``: the ``runs`` (each a method with overrides, and
optionally ``train`` overrides such as its own learning rate), the ``seeds``, the ``baseline``
run for paired differences, whether to score the base model as a reference row, and the
``output_dir``. Every method, metric and seed is validated before the first run starts, and every
run gets a folder of its own: two names that map to one folder (``x y`` and ``x_y``, or names that
differ only in case, on a case-insensitive file system) are refused.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    RunConfig,
    TrainConfig,
    apply_overrides,
    build_config,
    check_method,
    check_section,
    check_type,
    validate_run,
)
from ..errors import LorakitError, did_you_mean
from ..optimizers.lora_plus import DEFAULT_LR_RATIO_MODE


@dataclass
class CompareSpec:
    """The ``compare`` section."""

    runs: list[Any]
    seeds: tuple[int, ...] = (0, 1, 2)
    baseline: str | None = None
    base_model_row: bool = True
    output_dir: str = "runs/compare"
    eval_path: str | None = None  # every run (and the base-model row) evaluates on this file
    tune: dict[str, Any] | None = None  # a tune section: each run tuned on the validation split first (tuning.py)


# train keys a run may not override: compare sets the first two, the objective decides the data
TRAIN_KEYS_SHARED = ("seed", "output_dir", "objective")


@dataclass
class Run:
    """One method of the comparison: its display name, its full method options and the ``train``
    keys it overrides (e.g. its own learning rate)."""

    name: str
    method: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name.replace("λ=", "lr_ratio_")).strip("_")


def _run_name(method: dict[str, Any], train: dict[str, Any]) -> str:
    ratio, mode = method.get("lr_ratio"), method.get("lr_ratio_mode", DEFAULT_LR_RATIO_MODE)
    name = f"{method['name']} λ={ratio:g}" if ratio is not None else method["name"]
    name = name if mode == DEFAULT_LR_RATIO_MODE else f"{name} {mode}"
    shown = (f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in train.items())
    return " ".join([name, *shown])


def _check_train(index: int, values: Any) -> dict[str, Any]:
    """A run's ``train`` overrides: known keys of their types, none of the shared ones."""
    where = f"compare.runs[{index}].train"
    if values is not None and not isinstance(values, dict):
        raise LorakitError(f"{where} must be a mapping of train keys, e.g. {{lr: 1.0e-4}}, got {values!r}")
    shared = [k for k in TRAIN_KEYS_SHARED if k in (values or {})]
    if shared:
        raise LorakitError(f"{where}.{shared[0]} cannot differ between runs (compare sets seed and output_dir); "
                           f"set train.{shared[0]} for all runs instead")
    return check_section(where, TrainConfig, values)


def _parse_runs(items: Any, defaults: dict[str, Any]) -> list[Run]:
    if not isinstance(items, list) or not items:
        raise LorakitError("compare.runs must be a non-empty list of runs, e.g. [{method: olora}, {method: lora}]")
    runs = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = {"method": item}
        if not isinstance(item, dict) or item.get("method") is None or set(item) - {"name", "method", "train"}:
            raise LorakitError(f"compare.runs[{index}] must be a method name or a mapping with 'method' "
                               "(and 'name', 'train')")
        options = {k: v for k, v in defaults.items() if k != "name"}
        options.update(check_method(item["method"]))
        train = _check_train(index, item.get("train"))
        runs.append(Run(str(item.get("name") or _run_name(options, train)), options, train))
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LorakitError(f"compare.runs has two runs named {duplicates[0]!r}; give them distinct 'name's")
    return runs


def _parse_spec(raw: Any, defaults: dict[str, Any]) -> tuple[CompareSpec, list[Run]]:
    if not isinstance(raw, dict):
        raise LorakitError("a compare config needs a 'compare' section with 'runs' (and optionally 'seeds')")
    hints = typing.get_type_hints(CompareSpec)
    known = [f.name for f in dataclasses.fields(CompareSpec)]
    for key in raw:
        if key not in known:
            raise LorakitError(f"unknown config key 'compare.{key}'{did_you_mean(key, known)}; "
                               f"compare keys are: {', '.join(known)}")
    values = {k: check_type(f"compare.{k}", v, hints[k]) for k, v in raw.items() if k != "runs"}
    spec = CompareSpec(runs=raw.get("runs"), **values)
    runs = _parse_runs(spec.runs, defaults)
    if not spec.output_dir.strip():
        raise LorakitError("compare.output_dir is empty; give a folder for the comparison, e.g. runs/compare")
    if Path(spec.output_dir).exists() and not Path(spec.output_dir).is_dir():
        raise LorakitError(f"compare.output_dir {spec.output_dir} is a file; give a folder")
    _check_folders(runs, Path(spec.output_dir))
    if not spec.seeds:
        raise LorakitError("compare.seeds is empty; give at least one seed, e.g. compare.seeds=[0,1,2]")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise LorakitError(f"compare.seeds repeats a seed: {list(spec.seeds)}")
    names = [r.name for r in runs]
    if spec.baseline is None:
        spec.baseline = names[0]
    elif spec.baseline not in names:
        raise LorakitError(f"compare.baseline {spec.baseline!r} is not a run{did_you_mean(spec.baseline, names)}; "
                           f"runs: {', '.join(names)}")
    return spec, runs


def _check_folders(runs: list[Run], output_dir: Path) -> None:
    """Every run's folder is its own and inside ``output_dir/runs``: no two names share a slug
    (compared case-insensitively, for case-insensitive file systems), and no slug is empty or dots."""
    seen: dict[str, Run] = {}
    for run in runs:
        if not run.slug.strip("."):
            raise LorakitError(f"compare.runs name {run.name!r} leaves no folder name (letters, digits, '.', '_' or "
                               "'-'); give the run another 'name'")
        first = seen.setdefault(run.slug.casefold(), run)
        if first is not run:
            raise LorakitError(f"compare.runs {first.name!r} and {run.name!r} would share the folder "
                               f"{output_dir / 'runs' / first.slug}; give them names that differ in more than "
                               "spaces, punctuation or case")


def run_config(base: RunConfig, run: Run, seed: int, output_dir: Path) -> RunConfig:
    """The training config of ``run`` with ``seed``, writing to its own folder."""
    folder = output_dir / "runs" / run.slug / f"seed-{seed}"
    train = dataclasses.replace(base.train, **run.train, seed=seed, output_dir=str(folder))
    return dataclasses.replace(base, method=dict(run.method), train=train)


def load_compare_config(raw: dict[str, Any], overrides: list[str] | None = None
                        ) -> tuple[RunConfig, CompareSpec, list[Run]]:
    """The shared run config, the compare section and the runs, all checked."""
    raw = apply_overrides(raw, overrides or [])
    compare_raw = raw.pop("compare", None)
    spec, runs = _parse_spec(compare_raw, check_method(raw.get("method")))
    if spec.eval_path is not None:  # the same as data.eval_path, for every run
        raw["data"] = {**(raw.get("data") or {}), "eval_path": spec.eval_path}
    base = build_config({**raw, "method": runs[0].method})
    for run in runs:
        config = run_config(base, run, spec.seeds[0], Path(spec.output_dir))
        config.method_spec()
        validate_run(config)
    return base, spec, runs
