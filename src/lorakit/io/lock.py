"""One training process per output folder: an advisory lock held for the whole run.

The lock file is opened with ``O_NOFOLLOW`` (created with ``O_EXCL``) and must be a plain file
with one link: a symbolic or hard link planted at its name is refused, never followed, so the
lock cannot truncate or write into another file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import LorakitError

LOCK_FILE = ".lorakit.lock"


def _open_lock(path: Path) -> int:
    """A descriptor of the plain lock file at ``path``, created if absent."""
    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise LorakitError(f"{path} is a symbolic link; lorakit's lock file must be a plain file: "
                               "remove the link and run again") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LorakitError(f"{path} is not a plain file of its own (a link or a device); lorakit's lock file must "
                           "be: remove it and run again")
    return fd


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
    with os.fdopen(_open_lock(folder / LOCK_FILE), "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
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
