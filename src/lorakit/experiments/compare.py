"""Running a comparison: every run × seed, then results, report and plots.

The base model is loaded once; each run trains a deep copy of it. Finished runs
(``summary.json`` present) are skipped on a re-run, interrupted ones resume from their last
checkpoint, and a run that fails becomes a ``failed`` row with its one-line error.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import LorakitError
from ..io.atomic import write_text_atomic
from ..loading import evaluate, labels_of, load_base, load_split
from ..optimizers.lora_plus import DEFAULT_LR_RATIO_MODE
from ..train import train
from .plots import plot_lambda_sweep, plot_loss_curves, plot_metric_bars, plot_ranks
from .ranks import rank_lines, rank_table
from .report import resource_lines, write_report, write_results
from .spec import CompareSpec, Run, run_config
from .stats import aggregate, paired_vs_baseline

BASE_ROW = "base model"
# what each run cost, from its summary: reported in their own table (lorakit.train.loop.Run._resources)
RESOURCES = ("trainable_parameters", "seconds_per_step", "state_mib", "peak_memory_mib")


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
               progress: bool) -> tuple[dict[str, Any], bool]:
    """The run's row, and whether it was finished already (then nothing is trained)."""
    folder, lr = Path(config.train.output_dir), config.train.lr
    if (folder / "summary.json").is_file():
        return _row(run, seed, folder, lr=lr, status="ok", **json.loads((folder / "summary.json").read_text())), True
    resume = (folder / "checkpoints" / "latest").is_file()
    try:
        summary = train(config, resume=resume, progress=progress, base=base)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed run is reported as a row, the sweep goes on
        return _row(run, seed, folder, lr=lr, status="failed", error=_one_line(exc)), False
    return _row(run, seed, folder, lr=lr, status="ok", **summary), False


def _base_model_row(config: RunConfig, base: tuple[Any, Any], out: Path) -> dict[str, Any]:
    folder = out / "base_model"
    cached = folder / "metrics.json"
    if cached.is_file():
        metrics = json.loads(cached.read_text())
    else:
        model, tokenizer = base
        metrics = evaluate(config, model, tokenizer, load_split(config), folder)
        write_text_atomic(cached, json.dumps(metrics, indent=2) + "\n")
    return _row(Run(BASE_ROW, {"name": "none"}), None, folder, status="ok", **metrics)


def _curves(rows: list[dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for row in rows:
        log = Path(row["run_dir"] or "") / "metrics.jsonl"
        if row["status"] == "ok" and row["seed"] is not None and log.is_file():
            records = [json.loads(line) for line in log.read_text().splitlines() if line]
            curves.setdefault(row["run"], []).append(records)
    return curves


def run_compare(base_config: RunConfig, spec: CompareSpec, runs: list[Run], command: str = "",
                progress: bool = True) -> Path:
    """Train every run × seed, then write results, plots and ``report.md``; return the report's path."""
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    split = load_split(base_config)  # bad data fails before the model is loaded
    base = load_base(base_config, labels=labels_of(base_config, split))
    rows: list[dict[str, Any]] = []
    jobs = [(run, seed) for run in runs for seed in spec.seeds]
    bar = tqdm(total=len(jobs), desc="sweep", position=0, disable=not progress, dynamic_ncols=True)
    for run, seed in jobs:
        bar.set_postfix_str(f"{run.name} seed {seed}")
        row, skipped = _train_one(run_config(base_config, run, seed, out), run, seed, base, progress)
        rows.append(row)
        bar.update(1)
        if progress:
            tqdm.write(_describe(row) + (" [finished earlier]" if skipped else ""))
    bar.close()
    metrics = list(base_config.eval.metrics)
    reference = [_base_model_row(base_config, base, out)] if spec.base_model_row else []
    aggregates = aggregate(rows, metrics + list(RESOURCES))
    write_results(out, reference + rows, aggregates)
    plots = ["loss_curves.png", "metrics.png"]
    plot_loss_curves(_curves(rows), out / "loss_curves.png")
    plot_metric_bars(aggregates, metrics, out / "metrics.png")
    if plot_lambda_sweep(aggregates, out / "lambda_sweep.png", baseline=spec.baseline):
        plots.append("lambda_sweep.png")
    ranks = rank_table(rows)
    if plot_ranks(ranks, out / "ranks.png"):
        plots.append("ranks.png")
    meta = {
        "model": base_config.model.path, "data": base_config.data.path,
        "split": f"train {base_config.data.train_size}, eval "
                 + (f"every record of {base_config.data.eval_path}" if base_config.data.eval_path
                    else str(base_config.data.eval_size)),
        "seeds": ", ".join(map(str, spec.seeds)), "command": command,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "duration": f"{time.time() - started:.0f} s (this invocation)",
    }
    paired = paired_vs_baseline(rows, spec.baseline, metrics) if spec.baseline else {}
    report = write_report(out, reference + rows, aggregates, paired, metrics, spec.baseline, plots, meta,
                          sections=resource_lines(aggregates, RESOURCES) + rank_lines(ranks))
    if not any(r["status"] == "ok" for r in rows):
        raise LorakitError(f"every run failed; see {report}")
    return report
