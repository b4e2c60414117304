"""Training checkpoints: adapter + optimizer + scheduler + RNG + data position, written atomically
and sealed with checksums.

Layout under ``<output_dir>/checkpoints/``: one folder per saved step (``step-0000050``) and a
``latest`` file naming the newest complete one. Each folder is written to a temporary name and
renamed into place, and ``latest`` is replaced only after that, so a crash or a kill at any
moment leaves the previous checkpoint usable.

Checksums: the last file written into the temporary folder, before the rename, is
``checksums.json``, the SHA-256 and size of every other file there (adapter weights and config,
``training_state.pt`` with the optimizer, scheduler, RNG and training state, and
``trainer_state.json``). ``latest_checkpoint`` verifies them all before a run resumes: a flipped
bit in the optimizer state or a changed adapter float would otherwise resume without a word and
train another adapter. A missing or differing file is a one-line error that names it and the
newest earlier checkpoint whose files verify (or says that none is left); nothing is written
before that check. Hashing streams each file in 1 MiB chunks (about 1.3 GB/s on one core, a
fraction of what writing the file takes), once when it is written, from the page cache, and once
on resume. A checkpoint from before lorakit wrote checksums (no ``checksums.json``) resumes
unverified (``has_checksums`` tells the loop, which notes it).

The final checkpoint of a run also records the run's final log record and summary
(``final`` in ``trainer_state.json``), from which ``train.loop`` writes the finished run's outputs,
so a run killed after it is completed exactly as the uninterrupted run would have been.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..errors import LorakitError
from ..io.adapter_files import CONFIG_FILE, WEIGHTS_FILE
from ..io.atomic import atomic_directory, write_text_atomic
from ..io.json_text import json_text

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.pt"
CHECKSUMS_FILE = "checksums.json"
ADAPTER_FILES = (WEIGHTS_FILE, CONFIG_FILE)
CHUNK_BYTES = 1 << 20
FOLDER_NAME = re.compile(r"step-\d{7,}")
START_OVER = "start over in a new train.output_dir"


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
    """Write the checkpoint of ``step`` atomically, its checksums last, point ``latest`` at it and
    prune old ones. ``snapshot``: the adapter tensors, training state and optimizer state, already
    gathered from the processes (a sharded run, ``train.sharding``)."""
    root = checkpoints_dir(output_dir)
    folder = root / f"step-{step:07d}"
    snapshot = snapshot or {"adapter": None, "training_state": adapter.training_state(),
                            "optimizer": optimizer.state_dict()}
    with atomic_directory(folder, (*ADAPTER_FILES, TENSORS_FILE, STATE_FILE, CHECKSUMS_FILE)) as tmp:
        adapter.write(tmp, snapshot["adapter"])
        torch.save({"optimizer": snapshot["optimizer"], "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "training_state": snapshot["training_state"]}, tmp / TENSORS_FILE)
        (tmp / STATE_FILE).write_text(json_text({**state, "step": step}, indent=2) + "\n")
        write_checksums(tmp)
    write_text_atomic(root / "latest", folder.name + "\n")
    for old in step_folders(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


# -- checksums ------------------------------------------------------------------------------
def file_checksum(path: Path) -> dict[str, Any]:
    """``{"sha256": hex digest, "bytes": size}`` of the file ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def write_checksums(folder: Path) -> None:
    """Record the checksum of every file in ``folder`` in its ``checksums.json``."""
    files = {p.name: file_checksum(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS_FILE}
    (folder / CHECKSUMS_FILE).write_text(json_text({"algorithm": "sha256", "files": files}, indent=2) + "\n")


def has_checksums(folder: Path) -> bool:
    return (folder / CHECKSUMS_FILE).is_file()


def damage(folder: Path) -> str | None:
    """What is wrong with the first file of ``folder`` that differs from its recorded checksum,
    as ``"<path> is damaged (why)"``; None where all match, or for a folder without checksums."""
    if not has_checksums(folder):
        return None
    try:
        files = json.loads((folder / CHECKSUMS_FILE).read_text(encoding="utf-8"))["files"]
        recorded = [(name, entry["sha256"], int(entry["bytes"])) for name, entry in files.items()]
    except Exception:  # unreadable, not JSON, or not the layout write_checksums writes
        return f"{folder / CHECKSUMS_FILE} is damaged (it is not the checksum list lorakit writes)"
    for name, sha256, size in recorded:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (the checkpoint's {CHECKSUMS_FILE} lists it)"
        if path.stat().st_size != size:
            return f"{path} is damaged (its size differs from the one recorded when it was written)"
        if file_checksum(path)["sha256"] != sha256:
            return f"{path} is damaged (its checksum differs from the one recorded when it was written)"
    return None


def step_folders(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``, oldest first (only names lorakit gives them: a
    user's ``step-backup`` is neither pruned nor offered)."""
    found = [p for p in root.glob("step-*") if FOLDER_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: step_of(p.name))


def step_of(name: str) -> int:
    """The step of a checkpoint folder's name (``step-0000050`` → 50)."""
    return int(name.removeprefix("step-"))


def fallback(root: Path, before: str | None = None) -> str:
    """What to do instead of resuming: the newest checkpoint under ``root`` (earlier than the
    folder named ``before``) whose files verify (one from before checksums: that has its state),
    or starting over where none is left."""
    limit = step_of(before) if before is not None and FOLDER_NAME.fullmatch(before) else None
    folders = [p for p in reversed(step_folders(root)) if limit is None or step_of(p.name) < limit]
    good = next((p for p in folders if (p / STATE_FILE).is_file() and damage(p) is None), None)
    if good is None:
        return f"no {'earlier ' if before else ''}checkpoint is left to resume, so {START_OVER}"
    return f"resume from {good.name} by writing '{good.name}' into {root / 'latest'}, or {START_OVER}"


# -- reading --------------------------------------------------------------------------------
def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, its files verified against their checksums, or
    None; a one-line error where ``latest`` names no checkpoint or a damaged one."""
    pointer = checkpoints_dir(output_dir) / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    folder = pointer.parent / name
    if not FOLDER_NAME.fullmatch(name) or not folder.is_dir():
        raise LorakitError(f"{pointer} names {name!r}, which is not a checkpoint folder there; "
                           f"{fallback(pointer.parent)}")
    problem = damage(folder) or (None if (folder / STATE_FILE).is_file() else f"{folder / STATE_FILE} is missing")
    if problem:
        raise LorakitError(f"{problem}; {fallback(pointer.parent, folder.name)}")
    return folder


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The JSON state of a checkpoint folder: its step, config and, for the final one, ``final``."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "config" not in state or "step" not in state:
            raise ValueError("unexpected contents")
    except Exception as exc:  # a file damaged outside lorakit in a checkpoint without checksums
        raise _damaged(folder / STATE_FILE, exc) from None
    return state


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trainer_state, tensors)`` of a checkpoint folder (a one-line error if it is damaged)."""
    state = read_trainer_state(folder)
    try:
        tensors = torch.load(folder / TENSORS_FILE, map_location="cpu", weights_only=True)
        if not isinstance(tensors, dict):
            raise ValueError("unexpected contents")
    except Exception as exc:  # unpickling and zip errors
        raise _damaged(folder / TENSORS_FILE, exc) from None
    return state, tensors


def _damaged(path: Path, exc: Exception) -> LorakitError:
    return LorakitError(f"{path} is damaged ({type(exc).__name__}); {fallback(path.parent.parent, path.parent.name)}")


def copy_adapter(folder: Path, dest: Path) -> None:
    """The adapter files of the checkpoint ``folder`` to the adapter folder ``dest``, atomically
    (the same bytes ``Adapter.save`` writes for the same tensors)."""
    with atomic_directory(dest, ADAPTER_FILES) as tmp:
        for name in ADAPTER_FILES:
            shutil.copyfile(folder / name, tmp / name)
