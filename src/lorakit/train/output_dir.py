"""A run's output folder: claiming it (``lorakit.io.ownership``: train writes only into a new or
empty folder or one it wrote), refusing to train over a finished run, finding the checkpoint to
resume, and which config changes a resumed run may make."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config import RUN_KEYS, SECTIONS, RunConfig
from ..errors import LorakitError
from ..io.ownership import Legacy, claim
from .checkpoint import latest_checkpoint

# every entry a training run may write in its output folder (trackers' folders included)
TRAIN_OUTPUTS = ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints", "adapter", "tensorboard",
                 "trackers.json", "wandb", "mlruns", "generations.jsonl", "predictions.jsonl", "held_out")
# a run folder of lorakit before manifests: its checkpoints' pointer proves it
TRAIN_LEGACY = Legacy("checkpoints/latest", TRAIN_OUTPUTS)

# keys a resumed run may change (logging, saving, the exact speed options, the final evaluation):
# those declared free_on_resume, and names of keys since renamed (train.tensorboard)
FREE_ON_RESUME = {name for name, option in RUN_KEYS.items() if option.free_on_resume} | {"train.tensorboard"}
# sections whose every key is free: a key removed from one since a checkpoint was made is free too
SECTIONS_FREE_ON_RESUME = tuple(section for section in SECTIONS
                                if all(name in FREE_ON_RESUME for name in RUN_KEYS if name.startswith(f"{section}.")))


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's config that a resumed run must share with the checkpoint's."""
    config = json.loads(json.dumps(config))  # as the checkpoint stores it (tuples become lists)
    defaults = json.loads(json.dumps(RunConfig().to_dict()))
    for section, values in defaults.items():  # a key added since the checkpoint was made counts as its default
        if isinstance(values, dict) and section != "method":  # (a whole section new since: its defaults)
            config[section] = {**values, **(config.get(section) or {})}
    for section in SECTIONS:
        config[section] = {k: v for k, v in config[section].items() if f"{section}.{k}" not in FREE_ON_RESUME}
    return {k: v for k, v in config.items() if k not in SECTIONS_FREE_ON_RESUME}


def run_inputs(config: RunConfig) -> list[str]:
    """The files a run reads, which it must never write over: its data and a local base model."""
    d = config.data
    return [d.path, d.eval_path, d.validation_path, d.held_out_path, config.model.path]


def make_output_dir(output_dir: Path, config: RunConfig | None = None, overwrite: bool = False,
                    inputs: tuple[str, ...] = ()) -> None:
    """Claim ``output_dir`` for a training run (``lorakit.io.ownership.claim``), before the model
    loads: a file in the way, another command's files or a user's, or an input among the run's
    outputs is a one-line error. ``inputs``: more files the run reads (its config file)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise LorakitError(f"cannot use train.output_dir {output_dir}: it is a file; choose a folder")
    claim(output_dir, "train", TRAIN_OUTPUTS, overwrite=overwrite, legacy=TRAIN_LEGACY,
          inputs=[*inputs, *(run_inputs(config) if config is not None else ())])


def check_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; ``None`` starts a fresh run (with ``resume``, only where no
    run has been saved yet: a finished run without checkpoints is never overwritten)."""
    if not resume:
        if (output_dir / "checkpoints").exists() or (output_dir / "adapter").exists():
            raise LorakitError(f"{output_dir} already holds a run; pass --resume to continue it "
                               "or choose another train.output_dir")
        return None
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        if (output_dir / "adapter").exists():
            raise LorakitError(f"{output_dir} holds a finished run without checkpoints, so there is nothing "
                               "to resume; choose another train.output_dir")
        print(f"lorakit: no checkpoint in {output_dir}; starting a fresh run", file=sys.stderr)
    return checkpoint
