"""Atomic writes: a reader sees the old file or folder, or the new one, never half of one.

A write goes to a temporary sibling named ``.<name>.lorakit-<pid>-<random>.tmp`` and is renamed
into place; a folder being replaced is first moved aside to ``.<name>.lorakit-<pid>-<random>.old``.
A process killed mid-write leaves such a sibling behind; the next write of the same name removes
it once its process is gone (``remove_stale``), and puts back an old copy whose replacement never
arrived. Only names of this form are touched: a user's ``.<name>.old`` is not lorakit's.
Errors of the file system (no space, a file-size limit, no permission) while writing become one
line naming the path (``write_error``), also when safetensors or ``torch.save`` report them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from ..errors import LorakitError
from .lock import LOCK_FILE

MANIFEST = ".lorakit-files.json"  # what lorakit wrote in a folder (lorakit.io.ownership)
BOOKKEEPING = (MANIFEST, LOCK_FILE)  # lorakit's own entries in a folder it writes, never a user's
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.lorakit-(?P<pid>\d+)-[^.]+\.(?P<kind>tmp|old)$")
_HINTS = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space (quota)",
          errno.EFBIG: "the file-size limit is too small (ulimit -f)", errno.EACCES: "choose a writable folder",
          errno.EPERM: "choose a writable folder", errno.EROFS: "choose a writable folder",
          errno.EISDIR: "a folder is in the way", errno.ENOTDIR: "a file is in the way of a folder"}
# what safetensors and torch.save say when the file system refuses a write
_IO_FAILURES = ("IoError", "PytorchStreamWriter", "unexpected pos", "file write failed", "No space left")


def write_error(path: str | os.PathLike, exc: BaseException, verb: str = "write") -> LorakitError:
    """The one-line error for a write to ``path`` (or another ``verb``) that failed with ``exc``."""
    code = getattr(exc, "errno", None)
    if code is None:  # safetensors' message carries the OS error: "... File too large (os error 27)"
        found = re.search(r"(?:code: |os error )(\d+)", str(exc))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (str(exc).strip().splitlines() or ["unknown error"])[0][:160]
    hint = _HINTS.get(code, "check the disk and the folder's permissions")
    return LorakitError(f"cannot {verb} {path}: {reason}; {hint}, then run the command again")


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the file system refusing a write (rather than a bug)."""
    if isinstance(exc, OSError):
        return True
    return type(exc).__name__ == "SafetensorError" or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in _IO_FAILURES))


def is_temporary(name: str) -> bool:
    """Whether ``name`` is the temporary sibling (or moved-aside old copy) of an atomic write."""
    return _TEMPORARY.match(name) is not None


def is_bookkeeping(name: str) -> bool:
    """Whether ``name`` is lorakit's own entry in a folder it writes: its manifest, its lock, or
    the temporary of an atomic write (never a user's file)."""
    return name in BOOKKEEPING or is_temporary(name)


def alive(pid: int) -> bool:
    """Whether process ``pid`` (of this machine) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(path: str | os.PathLike) -> None:
    """Clean up after a killed write of ``path``: remove its temporaries whose process is gone,
    and put back an old copy that a crash left moved aside (or remove it once the new one is in place)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for sibling in sorted(path.parent.glob(f".{glob_escape(path.name)}.lorakit-*")):
        found = _TEMPORARY.match(sibling.name)
        if not found or found["name"] != path.name or alive(int(found["pid"])):
            continue
        if found["kind"] == "old" and not path.exists():
            os.replace(sibling, path)
        else:
            remove_path(sibling)


def temporary_prefix(path: Path) -> str:
    """The start of the name of a temporary sibling of ``path`` (``tempfile`` adds the random part)."""
    return f".{path.name}.lorakit-{os.getpid()}-"


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def remove_path(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder with its contents, if present."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def fsync_tree(folder: Path) -> None:
    """Give every file under ``folder`` the usual mode and flush it to disk."""
    mode = 0o666 & ~_umask()
    for child in folder.rglob("*"):
        if child.is_file() and not child.is_symlink():
            child.chmod(mode)
            with open(child, "rb") as f:
                os.fsync(f.fileno())


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
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
    others = sorted(child.name for child in path.iterdir()
                    if not is_bookkeeping(child.name) and (owned is None or child.name not in owned))
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
    mode (``0666`` less the umask) whatever the writer used. A write the file system refuses is
    a one-line error (``write_error``).
    """
    path = Path(path).resolve()  # "." has no name to put a sibling beside; a link: write where it points
    remove_stale(path)  # first: an old copy put back is checked like any folder
    check_replaceable(path, owned)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp"))
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists():
            old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(exc) and not isinstance(exc, LorakitError):
            raise write_error(path, exc) from None
        raise
