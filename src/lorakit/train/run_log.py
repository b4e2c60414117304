"""A run's metrics log: ``metrics.jsonl`` (one JSON record per line) and the trackers of
``train.report_to`` — accelerate's TensorBoard, Weights & Biases and MLflow trackers.

Training records (``loss``, ``lr`` per optimizer group, ``grad_norm``, ``epoch``) appear under
``train/…``, evaluation metrics (``eval_loss``, ``bleu``, ``rouge1``, …) under ``eval/…``, all at
their optimizer step; every tracker gets the same scalars, and the run's config (flattened,
``train.lr`` …) once, when the run starts. TensorBoard writes to ``<output_dir>/tensorboard``;
W&B to ``<output_dir>/wandb`` (``WANDB_MODE=offline`` works without a network); MLflow to
``MLFLOW_TRACKING_URI``, or a file store in ``<output_dir>/mlruns``. A resumed run continues the
same W&B and MLflow runs (their ids are kept in ``<output_dir>/trackers.json``). On resume,
records past the checkpoint's step (written by a run killed after its last checkpoint) are dropped
from the JSONL file and purged from TensorBoard's view (``purge_step``), so the log reads like the
uninterrupted run's. TensorBoard reads a folder's event files in name order, and a name starts
with the second it was opened in, then host, process and an unpadded counter; so a resumed run
opens its file only once the clock is past the seconds of the files before it, or its purge could
be read before the records it hides.

The JSON that training writes (``metrics.jsonl``, ``summary.json``, the checkpoints'
``trainer_state.json`` and ``checksums.json``, ``trackers.json``) is strict JSON: ``json_text``
writes every float that is not finite as ``null``, never ``NaN`` or ``Infinity``, which most JSON
readers refuse. Per field: ``loss`` (training) is always finite, since a non-finite loss stops the
run before it is logged; ``grad_norm`` is ``null`` without clipping and where the norm overflowed;
an evaluation metric (``eval_loss``, ``bleu``, …, in the log and in the summary) is ``null`` where
it came out NaN or infinite (a float16 overflow, a metric undefined on the eval split); a config
value in a checkpoint is ``null`` where it is infinite, and a resume compares configs as written.
The trackers get the values themselves (they plot NaN as such).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..io.atomic import write_text_atomic
from ..io.json_text import json_text

JSONL_FILE, TENSORBOARD_DIR, TRACKERS_FILE = "metrics.jsonl", "tensorboard", "trackers.json"
TRAIN_KEYS = ("loss", "grad_norm", "epoch", "skipped_samples")
UNLOGGED_KEYS = ("step", "elapsed_s")


def jsonl_lines(path: Path) -> list[str]:
    """The records of a JSONL log, less a last line a kill cut short in its write."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line] if path.is_file() else []
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return lines


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the records of ``path`` past ``step``."""
    if path.is_file():
        kept = [line for line in jsonl_lines(path) if json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def log_ends_with(path: Path, record: dict[str, Any]) -> bool:
    """Whether the JSONL log ``path`` already ends with ``record`` (as ``RunLog.write`` wrote it)."""
    return jsonl_lines(path)[-1:] == [json_text(record)]


def scalars(record: dict[str, Any], group_names: list[str]) -> dict[str, float]:
    """Tracker tags and values of one record (``None`` and non-numbers left out)."""
    tags: dict[str, float] = {}
    for key, value in record.items():
        if key in UNLOGGED_KEYS or value is None:
            continue
        if key == "lr":
            tags.update({f"train/lr/{name}": float(lr) for name, lr in zip(group_names, value, strict=True)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"{'train' if key in TRAIN_KEYS else 'eval'}/{key}"] = float(value)
    return tags


def wait_for_next_event_file(folder: Path, longest_s: float = 2.0) -> None:
    """Sleep until the clock is past the second of every event file in ``folder``, so the next one
    sorts after them (at most ``longest_s``: a clock set back further is not waited for)."""
    stamps = [int(part) for part in (p.name.split(".")[3] for p in folder.glob("events.out.tfevents.*"))
              if part.isdigit()]
    if stamps:
        time.sleep(min(longest_s, max(0.0, max(stamps) + 1 - time.time())))


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 3e-4, ...}``: the config as trackers store hyperparameters (lists as text)."""
    return {f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
            for section, values in config.items() for key, value in values.items()}


def open_trackers(names: tuple[str, ...], output_dir: Path, resume_step: int | None) -> list[Any]:
    """Started accelerate trackers for ``names`` (``none`` or an empty list: no tracker)."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    ids_file = output_dir / TRACKERS_FILE
    ids = json.loads(ids_file.read_text()) if resume_step is not None and ids_file.is_file() else {}
    trackers = []
    if "tensorboard" in names:
        # the checkpoint's own step was logged before it was saved and is not logged again
        purge = None if resume_step is None else resume_step + 1
        if resume_step is not None:
            wait_for_next_event_file(output_dir / TENSORBOARD_DIR)
        trackers.append(TensorBoardTracker(TENSORBOARD_DIR, output_dir, purge_step=purge))
    if "wandb" in names:
        ids.setdefault("wandb", uuid.uuid4().hex[:8])  # W&B run ids: short, lowercase letters and digits
        trackers.append(WandBTracker("lorakit", name=output_dir.name, dir=str(output_dir), id=ids["wandb"],
                                     resume="allow"))
    if "mlflow" in names:
        import mlflow

        if "MLFLOW_TRACKING_URI" not in os.environ:  # a local file store, which MLflow 3 asks to opt into
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((output_dir / "mlruns").resolve().as_uri())
        trackers.append(MLflowTracker("lorakit", run_id=ids.get("mlflow"), run_name=output_dir.name))
    for tracker in trackers:
        tracker.start()
        if tracker.name == "mlflow":
            ids["mlflow"] = tracker.active_run.info.run_id
    if ids:
        write_text_atomic(ids_file, json_text(ids, indent=2) + "\n")
    return trackers


class RunLog:
    """Writes every record to the JSONL file and to the trackers of ``report_to`` (main process only)."""

    def __init__(self, output_dir: Path, enabled: bool, group_names: list[str], report_to: tuple[str, ...],
                 resume_step: int | None = None, config: dict[str, Any] | None = None) -> None:
        self.path, self.enabled, self.group_names = output_dir / JSONL_FILE, enabled, group_names
        self.trackers: list[Any] = []
        if not enabled:
            return
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        else:  # a fresh run's log starts empty: a new file, never appended to one that was there
            write_text_atomic(self.path, "")
        self.trackers = open_trackers(report_to, output_dir, resume_step)
        if resume_step is None and config is not None:  # a resumed run keeps the stored config
            for tracker in self.trackers:
                tracker.store_init_configuration(flat_config(config))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json_text(record) + "\n")
        values = scalars(record, self.group_names)
        for tracker in self.trackers:
            tracker.log(values, step=record["step"])
            if tracker.name == "tensorboard":
                tracker.writer.flush()

    def write_final(self, record: dict[str, Any]) -> None:
        """Write the run's final record unless the log already ends with it: a finished run's
        outputs are rewritten after a kill that may have come before or after this record."""
        if self.enabled and not log_ends_with(self.path, record):
            self.write(record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
