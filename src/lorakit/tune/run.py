"""``lorakit tune``: a worker of the study in ``tune.output_dir``.

``tune`` checks everything before any model loads — the tune section, every space key against its
declaration, the metric, the data and the validation split, the folder — then opens the study (or
joins it: another worker's, or the one a killed run left), marks failed the trials whose process
is gone, and runs trials until the study holds its budget or ``tune.timeout`` has passed. After
each trial it writes the outputs; the plots come at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from ..io.ownership import claim
from ..io.yaml_files import read_yaml
from ..loading import describe_split, load_split
from ..train.output_dir import comparable, run_inputs
from .outputs import BEST_YAML, PLOTS, REPORT, TRIALS_CSV, TRIALS_JSON, best_trial, write_outputs
from .spec import ON_VALIDATION, Dimension, TuneConfig, check_metric, dimensions, direction_of, split_tune, trial_config
from .study import (
    JOURNAL,
    UNUSED,
    budget,
    counted,
    fail_interrupted,
    open_study,
    sampler_for,
)
from .trials import TRIALS_DIR, Trials

TUNE_OUTPUTS = (JOURNAL, f"{JOURNAL}.lock", TRIALS_DIR, TRIALS_CSV, TRIALS_JSON, BEST_YAML, REPORT, PLOTS)


def tune(config: str | Path | dict[str, Any], overrides: list[str] | None = None, *, trials: int | None = None,
         timeout: float | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or continue, or join) the study of ``config``'s ``tune`` section; what it found.

    Args:
        config: a YAML file or the mapping it holds, with a ``tune`` section.
        overrides: ``section.key=value`` strings (``tune.trials=8`` too).
        trials, timeout: ``tune.trials`` and ``tune.timeout``, given on the command line.
        overwrite: write into a folder holding other files (they are kept).
    """
    raw = read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
    extra = [f"tune.trials={trials}"] if trials is not None else []
    extra += [f"tune.timeout={timeout}"] if timeout is not None else []
    raw, spec = split_tune(raw, [*(overrides or []), *extra])
    plan = Plan.make(raw, spec)
    out = Path(spec.output_dir)
    inputs = [config if isinstance(config, (str, Path)) else None, *run_inputs(plan.probe)]
    claim(out, "tune", TUNE_OUTPUTS, overwrite=overwrite, inputs=inputs)
    study = open_study(spec, out, plan.direction, plan.identity(), plan.dims)
    interrupted = fail_interrupted(study)
    if interrupted and progress:
        print(f"lorakit: trial(s) {', '.join(map(str, interrupted))} had been interrupted; marked failed, to be "
              "replaced", flush=True)
    runner = Trials(raw, plan.dims, spec.metric, out, spec.pruner != "none")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is recorded with its reason, not logged
    _work(study, spec, plan, runner, progress)
    write_outputs(out, study, plan.dims, raw, plan.about(study), plots=True)
    best = best_trial(study)
    return {**plan.about(study), "best_trial": None if best is None else best.number,
            "best_value": None if best is None else best.value, "best": None if best is None else best.params,
            "output_dir": str(out)}


class Plan:
    """What a worker searches, checked before any trial: the space, the metric, its direction and
    the validation split (``probe``: the config at the space's first values)."""

    def __init__(self, raw: dict[str, Any], spec: TuneConfig, dims: list[Dimension], probe: Any) -> None:
        self.raw, self.spec, self.dims, self.probe = raw, spec, dims, probe
        self.direction = direction_of(spec)
        self.budget = budget(spec, dims)

    @classmethod
    def make(cls, raw: dict[str, Any], spec: TuneConfig) -> Plan:
        probe = trial_config(raw, {}, **ON_VALIDATION)
        dims = dimensions(spec, raw, probe)
        check_metric(spec, probe)
        load_split(probe)  # the data and the validation split, read and checked before any model loads
        return cls(raw, spec, dims, probe)

    def identity(self) -> dict[str, Any]:
        """What the study searches: a worker with another identity is refused."""
        return {"metric": self.spec.metric, "space": {d.key: d.as_dict() for d in self.dims},
                "config": comparable(trial_config(self.raw, {}).to_dict())}

    def about(self, study: optuna.Study) -> dict[str, Any]:
        return {"metric": self.spec.metric, "direction": self.direction, "split": describe_split(self.probe),
                "budget": self.budget, "counted": len(counted(study)), "sampler": self.spec.sampler,
                "pruner": self.spec.pruner, "storage": self.spec.storage or str(Path(self.spec.output_dir) / JOURNAL)}


def _work(study: optuna.Study, spec: TuneConfig, plan: Plan, runner: Trials, progress: bool) -> None:
    """Run trials, one ``optimize`` call each, until the study has its budget (or ``tune.timeout``
    has passed); the outputs after each."""
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    bar = tqdm(total=plan.budget, desc=f"tune {spec.metric}", disable=not progress, dynamic_ncols=True)

    def objective(trial: optuna.Trial) -> float:
        if _past_budget(study, trial.number, plan.budget):  # another worker asked at the same moment
            study._storage.set_trial_system_attr(trial._trial_id, UNUSED, True)
            raise optuna.TrialPruned("past the budget")
        bar.set_postfix_str(f"trial {trial.number} running", refresh=True)
        return runner(trial)

    try:
        while deadline is None or time.monotonic() < deadline:
            fail_interrupted(study)
            _show(bar, study, plan)
            if len(counted(study)) >= plan.budget:
                return
            study.sampler = sampler_for(spec, plan.dims, len(study.get_trials(deepcopy=False)))
            study.optimize(objective, n_trials=1, catch=(Exception,))
            write_outputs(Path(spec.output_dir), study, plan.dims, plan.raw, plan.about(study), plots=False)
            runner.verify_base()
    finally:
        _show(bar, study, plan)
        bar.close()


def _past_budget(study: optuna.Study, number: int, limit: int) -> bool:
    """Whether trial ``number`` comes after the budget is full."""
    return len([t for t in counted(study) if t.number < number]) >= limit


def _show(bar: tqdm, study: optuna.Study, plan: Plan) -> None:
    done = [t for t in counted(study) if t.state.is_finished()]
    bar.n = min(len(done), plan.budget)
    best = best_trial(study)
    bar.set_postfix_str("" if best is None else f"best {best.value:.4g} (trial {best.number})", refresh=True)
