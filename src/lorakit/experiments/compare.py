"""Running a comparison: every run × seed, then results, report and plots.

The base model is loaded once; each run trains a deep copy of it. Finished runs
(``summary.json`` present) are skipped on a re-run, interrupted ones resume from their last
checkpoint, and a run that fails becomes a ``failed`` row with its one-line error.

A run folder is reused only for the run this comparison would train there: before any model loads,
every folder that already holds a run (finished, or checkpointed) has its recorded config
(``config.yaml``, else its latest checkpoint's) compared with this invocation's, on the keys that
change what is trained (``lorakit.train.output_dir.comparable``: logging, speed options and the
``eval`` section may differ). A difference, or a run without a recorded config, is refused
(``rerun_changed``: those folders, if lorakit run folders, are removed and trained again). The
base-model row is cached with the settings it was scored with and scored again when they change,
so every row, and the report's model and data, describe this invocation's config.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import LorakitError
from ..io.atomic import write_text_atomic
from ..io.json_text import json_text
from ..io.lock import folder_lock
from ..io.ownership import Legacy, claim, refuse_removal
from ..loading import final_evaluation, labels_of, load_base, load_held_out, load_split, reported_metrics
from ..optimizers.lora_plus import DEFAULT_LR_RATIO_MODE
from ..status import lines_hidden, say
from ..train import train
from ..train.checkpoint import STATE_FILE, latest_checkpoint
from ..train.output_dir import TRAIN_LEGACY, comparable, make_output_dir, run_inputs
from .plots import plot_lambda_sweep, plot_loss_curves, plot_metric_bars, plot_ranks
from .ranks import rank_lines, rank_table
from .report import resource_lines, write_report, write_results
from .spec import CompareSpec, Run, run_config
from .stats import aggregate, paired_vs_baseline
from .tuning import check_tuning, tune_runs, tuning_lines

BASE_ROW = "base model"
# the entries a comparison writes in compare.output_dir (lorakit.io.ownership): one train folder per
# run and seed under runs/, the base model's evaluation, the report, its tables and plots
COMPARE_OUTPUTS = ("runs", "tune", "base_model", "report.md", "results.json", "results.csv", "summary.csv",
                   "loss_curves.png", "metrics.png", "lambda_sweep.png", "ranks.png")
# a comparison of lorakit before manifests: a run folder of its layout proves it
COMPARE_LEGACY = Legacy("runs/*/seed-*/config.yaml", COMPARE_OUTPUTS)
# what each run cost, from its summary: reported in their own table (lorakit.train.loop.Run._resources)
RESOURCES = ("trainable_parameters", "seconds_per_step", "state_mib", "peak_memory_mib")
# what the base-model row was scored with, next to its cached metrics.json
BASE_INPUTS = "computed_with.json"
UNSET = "(not set)"
UNKNOWN = "unknown"  # a run's recorded config is missing or unreadable


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]


def _describe(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['run']} seed {row['seed']}: FAILED ({row['error']})"
    scores = ", ".join(f"{k}={row[k]:.4g}" for k in ("eval_loss", "bleu", "rougeL", "accuracy", "pearson")
                       if row.get(k) is not None)
    return f"{row['run']} seed {row['seed']}: {scores} ({row.get('seconds', 0):.0f} s)"


def _row(run: Run, seed: int | None, folder: Path | None, **values: Any) -> dict[str, Any]:
    return {"run": run.name, "method": run.method.get("name", "none"), "lr_ratio": run.method.get("lr_ratio"),
            "lr_ratio_mode": run.method.get("lr_ratio_mode", DEFAULT_LR_RATIO_MODE), "seed": seed,
            "run_dir": str(folder) if folder else None, "error": None, **values}


def _train_one(config: RunConfig, run: Run, seed: int, base: tuple[Any, Any],
               progress: bool, recorded_scales: dict[str, float]) -> tuple[dict[str, Any], bool]:
    """The run's row, and whether it was finished already (then nothing is trained)."""
    folder, lr = Path(config.train.output_dir), config.train.lr
    lr = {"lr": lr, "lr_scale": config.method_spec().lr_scale}  # the optimizer's rate is their product
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        return _finished_row(run, seed, folder, lr, summary, recorded_scales.get(str(folder))), True
    resume = (folder / "checkpoints" / "latest").is_file()
    try:
        with lines_hidden():  # the sweep says one line per run instead
            summary = train(config, resume=resume, progress=progress, base=base)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed run is reported as a row, the sweep goes on
        return _row(run, seed, folder, **lr, status="failed", error=_one_line(exc)), False
    return _finished_row(run, seed, folder, lr, summary), False


def _finished_row(run: Run, seed: int, folder: Path, lr: dict[str, float], summary: dict[str, Any],
                  recorded_scale: float | None = None) -> dict[str, Any]:
    """A finished run's row: its summary, and the ``lr_scale`` it ran with: the summary's record,
    else ``recorded_scale`` (the comparison's last row for it: summaries written before they
    recorded their options hold none), else ``lr``'s (the method's current one)."""
    summary = dict(summary)
    options = summary.pop("method_options", None) or {}
    scale = options.get("lr_scale", recorded_scale if recorded_scale is not None else lr["lr_scale"])
    return _row(run, seed, folder, **{**lr, "lr_scale": scale}, status="ok", **summary)


def _base_model_inputs(config: RunConfig) -> dict[str, Any]:
    """What the base model's scores depend on: the task, the model, the data (its eval split), the
    ``eval`` settings and the eval batch size."""
    values = json.loads(json.dumps(config.to_dict()))
    return {**{k: values[k] for k in ("task", "model", "data", "eval")},
            "train": {"eval_batch_size": values["train"]["eval_batch_size"]}}


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` where it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _base_model_row(config: RunConfig, base: tuple[Any, Any], out: Path) -> dict[str, Any]:
    """The base model's scores: cached in ``base_model/``, scored again when what they depend on changed."""
    folder = out / "base_model"
    cached, inputs = folder / "metrics.json", _base_model_inputs(config)
    metrics = _read_json(cached) if _read_json(folder / BASE_INPUTS) == inputs else None
    if not isinstance(metrics, dict):
        (folder / BASE_INPUTS).unlink(missing_ok=True)  # first: a crash below leaves no stale pair
        say("scoring the base model alone, the comparison's reference row")
        model, tokenizer = base
        metrics = final_evaluation(config, model, tokenizer, load_split(config), load_held_out(config), folder)
        write_text_atomic(cached, json_text(metrics, indent=2) + "\n")
        write_text_atomic(folder / BASE_INPUTS, json_text(inputs, indent=2) + "\n")
    return _row(Run(BASE_ROW, {"name": "none"}), None, folder, status="ok", **metrics)


def _holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run: a finished one (``summary.json``) or a checkpointed one."""
    return (folder / "summary.json").is_file() or (folder / "checkpoints" / "latest").is_file()


def _recorded_config(folder: Path) -> dict[str, Any] | None:
    """The config the run in ``folder`` was trained with: its ``config.yaml``, else its latest
    checkpoint's (``None``: neither is there and readable)."""
    try:
        recorded = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        recorded = None
    if not isinstance(recorded, dict):
        try:
            checkpoint = latest_checkpoint(folder)
        except LorakitError:  # a pointer to a missing checkpoint
            checkpoint = None
        state = _read_json(checkpoint / STATE_FILE) if checkpoint else None
        recorded = state.get("config") if isinstance(state, dict) else None
    return recorded if isinstance(recorded, dict) else None


def _shown(value: Any) -> str:
    """A config value as a message shows it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) and value else json.dumps(value, ensure_ascii=False)  # shown, not written


def _first_difference(recorded: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first key that changes what is trained on which two configs differ, as
    ``key=recorded value, this comparison asks for wanted value`` (``None``: they agree)."""
    old, new = comparable(recorded), comparable(wanted)
    for section in dict.fromkeys([*new, *old]):
        a, b = old.get(section, UNSET), new.get(section, UNSET)
        pairs = ([(f"{section}.{k}", a.get(k, UNSET), b.get(k, UNSET)) for k in dict.fromkeys([*b, *a])]
                 if isinstance(a, dict) and isinstance(b, dict) else [(section, a, b)])
        for key, before, after in pairs:
            if before != after:
                return f"{key}={_shown(before)}, this comparison asks for {_shown(after)}"
    return None


def _changed_run(config: RunConfig) -> str | None:
    """Why the run already in ``config``'s folder is not the run ``config`` trains (``None``: it is,
    or the folder holds no run)."""
    folder = Path(config.train.output_dir)
    if not _holds_run(folder):
        return None
    recorded = _recorded_config(folder)
    try:
        difference = _first_difference(recorded, config.to_dict()) if recorded is not None else UNKNOWN
    except (TypeError, AttributeError, ValueError):  # a config.yaml edited into another shape
        difference = UNKNOWN
    if difference is UNKNOWN:
        return f"{folder} holds a run without a readable config (config.yaml or a checkpoint's), so it cannot be " \
               "checked against this comparison"
    difference = difference or _option_difference(folder, config)
    return f"{folder} was trained with {difference}" if difference else None


def _option_difference(folder: Path, config: RunConfig) -> str | None:
    """The first method option a finished run ran with (its summary's record) that the method now
    resolves to otherwise, e.g. a preset default changed since; ``None`` where they agree or the
    summary records none. Options the run derives (``None`` before it starts) are not compared."""
    summary = _read_json(folder / "summary.json")
    ran = summary.get("method_options") if isinstance(summary, dict) else None
    if not isinstance(ran, dict):
        return None
    for key, value in config.method_spec().to_dict().items():
        if value is not None and ran.get(key, UNSET) != value:
            return f"method.{key}={_shown(ran.get(key))} (as its method resolved then), this comparison asks for " \
                   f"{_shown(value)}"
    return None


def _check_earlier_runs(configs: list[RunConfig], rerun_changed: bool) -> list[Path]:
    """The folders of earlier runs that this comparison must train again (with ``rerun_changed``);
    without it, the first such run is refused."""
    changed = [(Path(c.train.output_dir), why) for c in configs if (why := _changed_run(c)) is not None]
    if changed and not rerun_changed:
        raise LorakitError(f"{changed[0][1]}; pass --rerun-changed to train it again, or choose another "
                           "compare.output_dir")
    for folder, _ in changed:  # only what training wrote is removed, never a file a user put there
        refuse_removal(folder, "train", TRAIN_LEGACY, "--rerun-changed")
    return [folder for folder, _ in changed]


def _remove_runs(folders: list[Path]) -> None:
    """Remove earlier runs' folders (refused while another lorakit process trains in one)."""
    for folder in folders:
        with folder_lock(folder, "compare.output_dir"):
            shutil.rmtree(folder)


def _curves(rows: list[dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for row in rows:
        log = Path(row["run_dir"] or "") / "metrics.jsonl"
        if row["status"] == "ok" and row["seed"] is not None and log.is_file():
            records = [json.loads(line) for line in log.read_text().splitlines() if line]
            curves.setdefault(row["run"], []).append(records)
    return curves


def _recorded_scales(out: Path) -> dict[str, float]:
    """The ``lr_scale`` of each run folder as the comparison's last ``results.json`` recorded it
    (written when the run finished), for finished runs whose summary does not record it."""
    previous = _read_json(out / "results.json")
    rows = previous.get("rows") if isinstance(previous, dict) else None
    return {str(r["run_dir"]): r["lr_scale"] for r in rows or []
            if isinstance(r, dict) and r.get("run_dir") and isinstance(r.get("lr_scale"), (int, float))}


def _train_all(jobs: list[tuple[Run, int, RunConfig]], base: tuple[Any, Any], progress: bool,
               recorded_scales: dict[str, float]) -> list[dict[str, Any]]:
    """Every run × seed's row, trained (or finished earlier), with a progress bar over them
    (``recorded_scales``: see ``_recorded_scales``)."""
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="sweep", position=0, disable=not progress, dynamic_ncols=True)
    for run, seed, config in jobs:
        bar.set_postfix_str(f"{run.name} seed {seed}")
        row, skipped = _train_one(config, run, seed, base, progress, recorded_scales)
        rows.append(row)
        bar.update(1)
        if progress:
            tqdm.write(_describe(row) + (" [finished earlier]" if skipped else ""))
    bar.close()
    return rows


def _meta(config: RunConfig, spec: CompareSpec, command: str, started: float) -> dict[str, str]:
    """The report's header: the model and data every row was trained and scored with, the machine."""
    d = config.data
    return {
        "model": config.model.path, "data": d.path,
        "split": f"train {d.train_size}, eval " + (f"every record of {d.eval_path}" if d.eval_path
                                                    else str(d.eval_size)),
        "seeds": ", ".join(map(str, spec.seeds)), "command": command,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "duration": f"{time.time() - started:.0f} s (this invocation)",
    }


def _write_outputs(out: Path, spec: CompareSpec, metrics: list[str], rows: list[dict[str, Any]],
                   reference: list[dict[str, Any]], meta: dict[str, str], tuned: list[dict[str, Any]]) -> Path:
    """Results, plots and ``report.md`` of the rows (``tuned``: what each run's search found);
    the report's path."""
    aggregates = aggregate(rows, metrics + list(RESOURCES))
    write_results(out, reference + rows, aggregates, tuned)
    plots = ["loss_curves.png", "metrics.png"]
    plot_loss_curves(_curves(rows), out / "loss_curves.png")
    plot_metric_bars(aggregates, metrics, out / "metrics.png")
    if plot_lambda_sweep(aggregates, out / "lambda_sweep.png", baseline=spec.baseline):
        plots.append("lambda_sweep.png")
    ranks = rank_table(rows)
    if plot_ranks(ranks, out / "ranks.png"):
        plots.append("ranks.png")
    paired = paired_vs_baseline(rows, spec.baseline, metrics) if spec.baseline else {}
    return write_report(out, reference + rows, aggregates, paired, metrics, spec.baseline, plots, meta,
                        sections=tuning_lines(tuned) + resource_lines(aggregates, RESOURCES) + rank_lines(ranks))


def run_compare(base_config: RunConfig, spec: CompareSpec, runs: list[Run], command: str = "",
                progress: bool = True, rerun_changed: bool = False, overwrite: bool = False,
                inputs: tuple[str, ...] = ()) -> Path:
    """Train every run × seed, then write results, plots and ``report.md``; return the report's path.
    With ``compare.tune``, each run is first tuned on the validation split (``tuning``) and its
    seeds train at its best values.

    A folder holding a run trained with another config (on the keys that change what is trained)
    is refused before anything loads; ``rerun_changed``: it is removed and trained again. The
    output folder is claimed for ``compare`` (``lorakit.io.ownership``; ``overwrite``: write there
    despite other files, ``inputs``: files the comparison reads besides its data, e.g. its config)."""
    out, started, found = Path(spec.output_dir), time.time(), []
    owner = {"overwrite": overwrite, "inputs": [*inputs, *run_inputs(base_config)], "legacy": COMPARE_LEGACY}
    if spec.tune is not None:  # every search checked before the first; the runs then take their best values
        check_tuning(spec, runs, base_config)
        claim(out, "compare", COMPARE_OUTPUTS, **owner)
        runs, found = tune_runs(spec, runs, base_config, progress)
    jobs = [(run, seed, run_config(base_config, run, seed, out)) for run in runs for seed in spec.seeds]
    stale = _check_earlier_runs([config for _, _, config in jobs], rerun_changed)
    claim(out, "compare", COMPARE_OUTPUTS, **owner)
    split = load_split(base_config)  # bad data fails before the model is loaded
    load_held_out(base_config)
    _remove_runs(stale)
    for _, _, config in jobs:  # every run folder claimed (with --overwrite where given) before the model loads
        make_output_dir(Path(config.train.output_dir), config, overwrite)
    base = load_base(base_config, labels=labels_of(base_config, split))
    rows = _train_all(jobs, base, progress, _recorded_scales(out))
    reference = [_base_model_row(base_config, base, out)] if spec.base_model_row else []
    report = _write_outputs(out, spec, reported_metrics(base_config), rows, reference,
                            _meta(base_config, spec, command, started), found)
    if not any(r["status"] == "ok" for r in rows):
        raise LorakitError(f"every run failed; see {report}")
    return report
