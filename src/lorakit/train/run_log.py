"""A run's metrics log: ``metrics.jsonl`` (one JSON record per line) and, alongside, TensorBoard
event files in ``<output_dir>/tensorboard`` (``tensorboard --logdir runs/``).

Training records (``loss``, ``lr`` per optimizer group, ``grad_norm``, ``epoch``) appear under
``train/…``, evaluation metrics (``eval_loss``, ``bleu``, ``rouge1``, …) under ``eval/…``, all at
their optimizer step. On resume, records past the checkpoint's step (written by a run killed after
its last checkpoint) are dropped from the JSONL file and purged from TensorBoard's view
(``purge_step``), so the log reads like the uninterrupted run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io.atomic import write_text_atomic

JSONL_FILE, TENSORBOARD_DIR = "metrics.jsonl", "tensorboard"
TRAIN_KEYS = ("loss", "grad_norm", "epoch", "skipped_samples")
UNLOGGED_KEYS = ("step", "elapsed_s")


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the records of ``path`` past ``step``."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def scalars(record: dict[str, Any], group_names: list[str]) -> dict[str, float]:
    """TensorBoard tags and values of one record (``None`` and non-numbers left out)."""
    tags: dict[str, float] = {}
    for key, value in record.items():
        if key in UNLOGGED_KEYS or value is None:
            continue
        if key == "lr":
            tags.update({f"train/lr/{name}": float(lr) for name, lr in zip(group_names, value, strict=True)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"{'train' if key in TRAIN_KEYS else 'eval'}/{key}"] = float(value)
    return tags


class RunLog:
    """Writes every record to the JSONL file and, with ``tensorboard``, as scalars (main process only)."""

    def __init__(self, output_dir: Path, enabled: bool, group_names: list[str], tensorboard: bool,
                 resume_step: int | None = None) -> None:
        self.path, self.enabled, self.group_names = output_dir / JSONL_FILE, enabled, group_names
        self.writer = None
        if not enabled:
            return
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # the checkpoint's own step was logged before it was saved and is not logged again
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for tag, value in scalars(record, self.group_names).items():
                self.writer.add_scalar(tag, value, global_step=record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
