"""The ``tune:`` section of a config: what ``lorakit tune`` searches, and how it is checked.

A space maps config keys (``train.lr``, ``method.lr_ratio``, ``data.max_length`` …: any declared
run key or an option of the config's method) to a range ``{low, high, log, step}`` or to
``{choices: [...]}``. Every bound and choice is checked against the key's own declaration (the
same ``Option`` that checks a run) by building the config with it, so a range reaching outside
what a key allows is an error before any trial runs, and so is a key the method does not have.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from ..config import RUN_KEYS, RunConfig, apply_overrides, build_config, check_section, declared, key, with_values
from ..core.options import Option
from ..core.spec import COMPONENT_KINDS
from ..errors import LorakitError, did_you_mean
from ..evaluate.metrics import HELD_OUT, lower_is_better, unprefixed
from ..presets import declared_options, find_option, parts_of
from ..train.objectives import objective_metrics

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
RANGE_FIELDS = ("low", "high", "log", "step")
# keys a tune may not search: they decide which records measure the trials, or where trials go
NOT_SEARCHED = ("data.evaluate_on", "data.eval_path", "data.validation_path", "data.validation_size",
                "data.held_out_path", "train.output_dir")
# what every trial sets: measured on the validation split alone (the held-out file is for the final runs)
ON_VALIDATION = {"data.evaluate_on": "validation", "data.held_out_path": None}


@dataclass
class TuneConfig:
    """``lorakit tune``: an Optuna study over the ``space``, each trial a training run measured on
    the validation split (``data.validation_path``, else ``data.validation_size`` records carved
    off the training records), never on the eval split."""

    metric: str = key("eval_loss", "the metric a trial is scored by: any metric the run computes (eval.metrics, "
                                   "eval_loss, DPO's), on the validation split")
    direction: str | None = key(None, "minimize or maximize (null: minimize losses, maximize scores)",
                                choices=DIRECTIONS)
    trials: int = key(20, "trials of the study, all processes together (interrupted ones are replaced)",
                      minimum=1)
    timeout: float | None = key(None, "seconds after which this process starts no new trial (null: none)",
                                minimum=0.0, open_minimum=True, requirement="a finite number > 0")
    sampler: str = key("tpe", "Optuna's sampler: tpe, random, or grid (every combination of the choices)",
                       choices=SAMPLERS)
    startup_trials: int | None = key(None, "tpe: the random trials before TPE models the results (null: a third "
                                           "of tune.trials, at least 3 and at most 10; Optuna's own default of "
                                           "10 would leave a budget of 8 all random)", minimum=1)
    pruner: str = key("median", "stops a trial whose evaluations fall behind (median, hyperband) or never (none); "
                                "it sees the metric at every train.eval_every (null: a quarter of the steps)",
                      choices=PRUNERS)
    seed: int = key(0, "seeds the sampler", minimum=0)
    storage: str | None = key(None, "where the study lives: null (study.journal in output_dir, shared by the "
                                    "processes of this machine) or a database URL (sqlite:///…, postgresql://…, "
                                    "mysql://…), shared by workers on several machines")
    output_dir: str = key("runs/tune", "the study's folder: storage, trials/, trials.csv, trials.json, best.yaml, "
                                       "report.md, plots/")
    space: dict[str, Any] = key({}, "config key → {low, high, log, step} or {choices: [...]}")


# the tune section's keys, declared above as the run's are ("tune.name" -> its Option)
TUNE_KEYS: dict[str, Option] = {f"tune.{f.name}": declared("tune", f, typing.get_type_hints(TuneConfig)[f.name])
                                for f in dataclasses.fields(TuneConfig)}


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``choices``, or a ``low``–``high`` range of ``kind`` (int or float)."""

    key: str
    kind: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """As the study records it (and compares it when a process joins)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


def read_tune(section: Any) -> TuneConfig:
    """The checked ``tune`` section (types and declared ranges; the space is checked by ``dimensions``)."""
    values = check_section("tune", TuneConfig, section)
    tune = TuneConfig(**values)
    for name, option in TUNE_KEYS.items():
        option.check(getattr(tune, name.split(".")[1]))
    if not tune.space:
        raise LorakitError("tune.space is empty; give at least one key to search, e.g. "
                           "train.lr: {low: 1.0e-5, high: 1.0e-2, log: true}")
    if not str(tune.output_dir).strip():
        raise LorakitError("tune.output_dir is empty; give a folder for the study, e.g. runs/tune")
    return tune


def direction_of(tune: TuneConfig) -> str:
    """``tune.direction``, else inferred from the metric: losses go down, scores up."""
    return tune.direction or ("minimize" if lower_is_better(tune.metric) else "maximize")


def check_metric(tune: TuneConfig, config: RunConfig) -> None:
    """Refuse a metric the trials do not compute."""
    if tune.metric.startswith(f"{HELD_OUT}_"):
        raise LorakitError(f"tune.metric {tune.metric!r} would choose on the held-out file, which only the final runs "
                           f"read; tune on {unprefixed(tune.metric)!r} (measured on the validation split)")
    computed = ["eval_loss", *config.eval.metrics, *objective_metrics(config.train.objective)]
    if tune.metric not in computed:
        hint = did_you_mean(tune.metric, computed)
        raise LorakitError(f"tune.metric {tune.metric!r} is not computed by this run{hint}; it computes "
                           f"{', '.join(dict.fromkeys(computed))} (add it to eval.metrics)")


def dimensions(tune: TuneConfig, raw: dict[str, Any], config: RunConfig) -> list[Dimension]:
    """The space's keys as ``Dimension``s, each checked: a known key of this config's method, a
    well-formed range or choices, and every bound and choice a value its declaration allows."""
    found = []
    for name, entry in tune.space.items():
        dimension = _dimension(str(name), entry, _declaration(str(name), config))
        for value in (dimension.choices if dimension.choices is not None else (dimension.low, dimension.high)):
            _check_value(raw, dimension.key, value)
        found.append(dimension)
    return found


def _declaration(name: str, config: RunConfig) -> Option | None:
    """The ``Option`` of space key ``name`` (``None``: a method component, which takes choices)."""
    section, _, attribute = name.partition(".")
    if name in NOT_SEARCHED:
        raise LorakitError(f"tune.space {name}: tune sets it (the trials train on the training records and are "
                           "measured on the validation split); remove it from the space")
    if section == "method":
        spec = config.method_spec()
        options = {option.name: option for option in declared_options(parts_of(spec))}
        if attribute in COMPONENT_KINDS:
            return None
        if attribute not in options:
            where = "" if find_option(attribute) is None else f"method {spec.name} has no option {attribute!r}; "
            raise LorakitError(f"tune.space method.{attribute}: {where or 'unknown method option; '}its options are "
                               f"{', '.join(options)}{did_you_mean(attribute, options)}")
        return options[attribute]
    if name not in RUN_KEYS:
        known = [*RUN_KEYS, *(f"method.{o}" for o in ("rank", "alpha", "lr_ratio", "dropout"))]
        raise LorakitError(f"tune.space has an unknown key {name!r}{did_you_mean(name, known)}; a space key is "
                           "section.key of the config (see docs/config.md) or method.OPTION")
    return RUN_KEYS[name]


def _dimension(name: str, entry: Any, option: Option | None) -> Dimension:
    """``entry`` of the space as a ``Dimension`` (its form checked, not yet its values)."""
    if not isinstance(entry, dict):
        raise LorakitError(f"tune.space {name} must be a mapping, {{low: .., high: ..}} or {{choices: [..]}}, "
                           f"got {entry!r}")
    if "choices" in entry:
        choices = entry["choices"]
        if set(entry) != {"choices"} or not isinstance(choices, list) or not choices:
            raise LorakitError(f"tune.space {name}: choices must be a non-empty list, alone, got {entry!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise LorakitError(f"tune.space {name}: choices repeat a value: {choices}")
        return Dimension(name, object, choices=tuple(choices))
    return _range(name, entry, option)


def _range(name: str, entry: dict[str, Any], option: Option | None) -> Dimension:
    unknown_fields = [f for f in entry if f not in RANGE_FIELDS]
    if unknown_fields or not {"low", "high"} <= set(entry):
        raise LorakitError(f"tune.space {name}: a range is {{low, high}} with optional log and step (or give "
                           f"choices), got {entry!r}")
    kind = option.type if option is not None else None
    if kind not in (int, float):
        raise LorakitError(f"tune.space {name} takes choices (it is not a number), got a range {entry!r}")
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    for bound, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and not _number(value):
            raise LorakitError(f"tune.space {name}: {bound} must be a number, got {value!r}")
    if low >= high:
        raise LorakitError(f"tune.space {name}: low must be below high, got low {low} and high {high}")
    if not isinstance(log, bool):
        raise LorakitError(f"tune.space {name}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise LorakitError(f"tune.space {name}: a log range needs low > 0, got low {low}")
    if step is not None and (step <= 0 or log):
        raise LorakitError(f"tune.space {name}: step must be > 0 and not with log, got step {step}")
    if kind is int and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise LorakitError(f"tune.space {name} is an integer key; give integer low, high and step")
    return Dimension(name, kind, kind(low), kind(high), log, step)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(raw: dict[str, Any], name: str, value: Any) -> None:
    """Refuse ``value`` for ``name`` where the config built with it would be refused."""
    try:
        trial_config(raw, {name: value})
    except LorakitError as exc:
        raise LorakitError(f"tune.space {name}: the value {value!r} is refused: {exc}") from None


def startup_trials(tune: TuneConfig) -> int:
    """The random trials before TPE starts modelling (``tune.startup_trials``, else a third of the budget)."""
    return tune.startup_trials or min(10, max(3, tune.trials // 3))


def trial_config(raw: dict[str, Any], values: dict[str, Any], **settings: Any) -> RunConfig:
    """The config of a trial: ``raw`` (the user's config, without its tune section) with the
    trial's ``values`` and tune's own ``settings`` (``section.key``: value) applied, checked."""
    return build_config(with_values(raw, {**values, **settings}))


def split_tune(raw: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], TuneConfig]:
    """The run's raw config and the checked ``tune`` section, overrides applied to both."""
    raw = apply_overrides(raw, overrides)
    if "tune" not in raw:
        raise LorakitError("the config has no tune section; add one with a space, e.g. "
                           "tune: {space: {train.lr: {low: 1.0e-5, high: 1.0e-2, log: true}}}")
    section = raw.pop("tune")
    return raw, read_tune(section)
