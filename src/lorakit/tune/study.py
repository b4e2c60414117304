"""The Optuna study behind ``lorakit tune``: where it lives, who runs which trial, and what counts.

The study lives in Optuna's journal file (``study.journal`` in the output folder: an append-only
log that several processes share through a file lock) or in the database ``tune.storage`` names.
Every process that runs ``lorakit tune`` on it is a worker: it asks the study for a trial, runs
it, and tells the result, until the study holds ``tune.trials`` trials that count.

What counts: every trial that ended (complete, pruned, failed) or is running. A trial whose process
is gone — killed, the machine rebooted — is marked failed with ``interrupted`` and does not count,
so the next worker replaces it (a worker on this machine knows a process is gone from its pid and
start time; workers elsewhere rely on the database's heartbeat). Two workers that ask at the same
moment may both get a trial past the budget: the later one is marked ``unused`` and not run.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..errors import LorakitError
from ..io.atomic import alive
from ..train.output_dir import comparable
from .spec import Dimension, TuneConfig, startup_trials

STUDY_NAME = "lorakit"
JOURNAL = "study.journal"
HEARTBEAT_S, GRACE_S = 60, 180  # database storage: a running trial without a heartbeat for GRACE_S has failed
WORKER, INTERRUPTED, UNUSED, REASON = "lorakit_worker", "lorakit_interrupted", "lorakit_unused", "reason"
LOST = "its worker stopped (no heartbeat to the database)"
IDENTITY = "lorakit"  # the study's user attribute: what it searches, to refuse a worker with another space


def open_study(tune: TuneConfig, out: Path, direction: str, identity: dict[str, Any],
               dims: list[Dimension]) -> optuna.Study:
    """The study of ``out`` (made on first use), refused where it searches something else."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=_storage(tune, out), study_name=study_name(tune), direction=direction,
                                    pruner=_pruner(tune.pruner), load_if_exists=True)
    except (OSError, ImportError, RuntimeError, ValueError) as exc:
        raise LorakitError(f"cannot open the study at {tune.storage or out / JOURNAL}: {_first_line(exc)}") from None
    recorded = _as_now(study.user_attrs.get(IDENTITY))
    if recorded is None:
        study.set_user_attr(IDENTITY, identity)
    elif recorded != identity:
        raise LorakitError(f"the study in {tune.storage or out} was made with another {_difference(recorded, identity)}"
                           "; choose another tune.output_dir (or tune.storage) for this search")
    if [d.name.lower() for d in study.directions] != [direction]:
        raise LorakitError(f"the study in {tune.storage or out} {study.direction.name.lower()}s; this search "
                           f"would {direction}: choose another tune.output_dir")
    study.sampler = sampler_for(tune, dims, 0)
    return study


def study_name(tune: TuneConfig) -> str:
    """The study's name in its storage: one study per journal file; in a database, one per
    ``tune.output_dir``, so the searches of a tuned comparison (a folder per run) share a database
    without meeting, while workers of one search (one config) meet."""
    return STUDY_NAME if tune.storage is None else f"{STUDY_NAME}:{tune.output_dir}"


def _storage(tune: TuneConfig, out: Path) -> Any:
    if tune.storage is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    if "://" not in tune.storage:
        raise LorakitError(f"tune.storage {tune.storage!r} is not a database URL; give e.g. sqlite:///study.db or "
                           "postgresql://user@host/db, or null for the journal file in tune.output_dir")
    with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what fails a lost worker's trial
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(tune.storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def _as_now(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded identity with the config keys added since it was made at their defaults, as a
    resumed run's checkpoint counts them."""
    if recorded is None or "config" not in recorded:
        return recorded
    return {**recorded, "config": comparable(recorded["config"])}


def _difference(recorded: dict[str, Any], identity: dict[str, Any]) -> str:
    """The first part in which two study identities differ, in words."""
    for part in ("metric", "space", "config"):
        if recorded.get(part) != identity.get(part):
            if part == "metric":
                return f"metric ({recorded.get(part)}, not {identity.get(part)})"
            return f"{part} ({_first_key_difference(recorded.get(part) or {}, identity.get(part) or {})})"
    return "search"


def _first_key_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    for name in sorted({*old, *new}):
        a, b = old.get(name), new.get(name)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _first_key_difference(a, b, f"{prefix}{name}.")
            return f"{prefix}{name}: {a!r} then, {b!r} now"
    return "?"


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def grid_of(dims: list[Dimension]) -> dict[str, list[Any]]:
    """The grid of a ``tune.sampler: grid`` search: every key's choices."""
    ranges = [d.key for d in dims if d.choices is None]
    if ranges:
        raise LorakitError(f"tune.sampler grid tries every combination of choices; {ranges[0]} is a range: give "
                           "it choices, or use sampler tpe or random")
    return {d.key: list(d.choices) for d in dims}


def sampler_for(tune: TuneConfig, dims: list[Dimension], trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The sampler for the next trial, seeded by ``tune.seed`` and the number of trials so far, so a
    study is reproducible in one process and two workers do not draw the same first values."""
    seed = tune.seed * 100_003 + trials_so_far
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(dims), seed=tune.seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(tune))


def budget(tune: TuneConfig, dims: list[Dimension]) -> int:
    """The trials the study runs: ``tune.trials``, or the grid's size where that is smaller."""
    if tune.sampler != "grid":
        return tune.trials
    size = 1
    for choices in grid_of(dims).values():
        size *= len(choices)
    return min(tune.trials, size)


def counts(trial: FrozenTrial) -> bool:
    """Whether ``trial`` counts towards the budget (not interrupted, not unused, not lost)."""
    return INTERRUPTED not in trial.system_attrs and UNUSED not in trial.system_attrs and not lost(trial)


def lost(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed without a reason of lorakit's: a database's heartbeat check failed it
    because its worker (on any machine) stopped, so it is replaced like an interrupted one."""
    return trial.state == TrialState.FAIL and REASON not in trial.user_attrs


def counted(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if counts(t)]


def worker() -> dict[str, Any]:
    """This process, as its trials record it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; None where /proc does not say)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _gone(record: dict[str, Any]) -> bool:
    """Whether the worker ``record`` (of this machine) has ended: its pid is not running, or runs
    another process (a different start time)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    return not alive(pid) or (record.get("started") is not None and _start_time(pid) != record["started"])


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark failed (``interrupted``) every running trial of this machine whose process is gone;
    the numbers of those trials. A database's own heartbeat does the same for other machines."""
    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = trial.system_attrs.get(WORKER)
        if isinstance(record, dict) and _gone(record):
            reason = f"interrupted: its process ({record['pid']}) ended before the trial did"
            try:  # the trial belongs to another process, so it is reached through the storage
                study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED, True)
                study._storage.set_trial_user_attr(trial._trial_id, REASON, reason)
                study.tell(trial.number, state=TrialState.FAIL)
            except (UpdateFinishedTrialError, ValueError):  # another worker marked it first
                continue
            found.append(trial.number)
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
