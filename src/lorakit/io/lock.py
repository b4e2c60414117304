"""One training process per output folder: an advisory lock held for the whole run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import LorakitError

LOCK_FILE = ".lorakit.lock"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "train.output_dir") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.lorakit.lock`` inside the block; if another process
    holds it, refuse at once. The operating system releases the lock when a process dies, so a
    crashed or killed run never leaves the folder locked. (No-op where ``fcntl`` is missing.)"""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            raise LorakitError(f"another lorakit process{f' (pid {owner})' if owner else ''} is writing to "
                               f"{folder}; wait for it to finish or choose another {what}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
