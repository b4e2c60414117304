"""Atomic writes: a reader sees the old file or folder, or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from ..errors import LorakitError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def check_replaceable(path: str | os.PathLike, owned: Collection[str] | None) -> None:
    """Refuse to replace ``path`` unless it is absent or a folder holding only names in ``owned``
    (what an earlier write of the same kind left there; ``None``: only an empty folder), so a
    user's other files are never deleted."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise LorakitError(f"{path} is a file; give a folder path for the output")
    others = sorted(child.name for child in path.iterdir() if owned is None or child.name not in owned)
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise LorakitError(f"{path} already holds other files ({listed}), which writing there would delete; "
                           "choose a new or empty folder")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    ``path`` must be absent or hold only the names in ``owned`` (see ``check_replaceable``). An
    existing ``path`` is moved aside first and removed only once the new folder is in place, so a
    crash at any moment leaves either the old or the new folder complete. Files get the usual
    mode (``0666`` less the umask) whatever the writer used.
    """
    path = Path(path)
    check_replaceable(path, owned)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise LorakitError(f"cannot write to {path}: {exc.strerror or exc}; choose a writable folder") from None
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                child.chmod(0o666 & ~_umask())
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
