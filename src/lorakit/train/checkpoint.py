"""Training checkpoints: adapter + optimizer + scheduler + RNG + data position, written atomically.

Layout under ``<output_dir>/checkpoints/``: one folder per saved step (``step-0000050``) and a
``latest`` file naming the newest complete one. Each folder is written to a temporary name and
renamed into place, and ``latest`` is replaced only after that, so a crash or a kill at any
moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..errors import LorakitError
from ..io.adapter_files import CONFIG_FILE, WEIGHTS_FILE
from ..io.atomic import atomic_directory, write_text_atomic

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.pt"


def rng_state() -> dict[str, Any]:
    """The random states that training consumes (dropout, data order helpers)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | Path, step: int, adapter: Adapter, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], keep: int, snapshot: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint of ``step`` atomically, point ``latest`` at it, prune old ones.
    ``snapshot``: the adapter tensors, training state and optimizer state, already gathered from
    the processes (a sharded run, ``train.sharding``)."""
    root = checkpoints_dir(output_dir)
    folder = root / f"step-{step:07d}"
    snapshot = snapshot or {"adapter": None, "training_state": adapter.training_state(),
                            "optimizer": optimizer.state_dict()}
    with atomic_directory(folder, (WEIGHTS_FILE, CONFIG_FILE, TENSORS_FILE, STATE_FILE)) as tmp:
        adapter.write(tmp, snapshot["adapter"])
        torch.save({"optimizer": snapshot["optimizer"], "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "training_state": snapshot["training_state"]}, tmp / TENSORS_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    write_text_atomic(root / "latest", folder.name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = checkpoints_dir(output_dir) / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / STATE_FILE).is_file():
        raise LorakitError(f"{pointer} names {folder.name}, which is missing; remove {pointer} to start over")
    return folder


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trainer_state, tensors)`` of a checkpoint folder (a one-line error if it is damaged)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        tensors = torch.load(folder / TENSORS_FILE, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "config" not in state or not isinstance(tensors, dict):
            raise ValueError("unexpected contents")
    except Exception as exc:  # json, unpickling and zip errors of a file damaged outside lorakit
        raise LorakitError(f"checkpoint {folder} is damaged ({type(exc).__name__}); point {folder.parent / 'latest'} "
                           "at an earlier step-* folder, or start the run over in a new output_dir") from None
    return state, tensors
