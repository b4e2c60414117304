"""Who may write where: one ownership rule for every command that writes files.

A command writes only into a folder that it creates, that is empty, or whose manifest
(``.lorakit-files.json``, kept in the folder) records the names it wrote there before. It
replaces only those names; any other entry in the folder — a user's file, or a file that another
lorakit command wrote — makes it refuse with one line naming that entry, before any model loads.
``--overwrite`` (``overwrite=True``) is the way to mean it: entries of the names the command
writes are replaced (and become its own), every other entry is kept, recorded as kept, and never
touched. A command never writes onto one of its own inputs, ``--overwrite`` or not.

Two ways of writing follow the rule:

- ``claim``: a command that writes named entries into a folder over time (``train``: its
  checkpoints, logs and adapter; ``eval``: its metrics; ``compare``: its report and runs) claims
  them up front; they are recorded in the manifest before anything is written, so a run killed
  at any moment finds its own files again.
- ``replace_folder``: a command whose output is a whole folder (``merge``, ``export``,
  ``import``) writes a temporary folder that replaces the old one in one rename; its manifest
  lists what it holds. Where the folder also holds entries that are not the command's (kept
  under ``--overwrite``), the new entries are moved in one by one instead: each move is atomic,
  the whole is not.

Folders written before manifests existed are recognised by a ``Legacy`` rule: a file that only
that command writes (``lorakit_merge.json``, ``checkpoints/latest``), and the names it writes; the
rest of such a folder is still refused. A single file output (``generate --out``) has no folder to
keep a manifest in: an existing file is replaced only with ``--overwrite`` (``check_new_file``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LorakitError
from .atomic import (
    MANIFEST,
    atomic_directory,
    fsync_tree,
    is_bookkeeping,
    remove_path,
    remove_stale,
    temporary_prefix,
    write_error,
    write_text_atomic,
)
from .json_text import json_text


@dataclass(frozen=True)
class Legacy:
    """A folder that lorakit wrote before manifests: ``marker`` (a path inside it that only this
    command writes) must exist; then the entries matching one of the ``names`` patterns are the
    command's, and any other entry is refused like a user's file."""

    marker: str  # a glob pattern relative to the folder, e.g. "runs/*/seed-*/config.yaml"
    names: tuple[str, ...]

    def adopted(self, folder: Path, entries: list[str]) -> set[str]:
        """The entries this command wrote, if the folder is its legacy output (else none)."""
        if next(iter(folder.glob(self.marker)), None) is None:
            return set()
        return {e for e in entries if any(fnmatch.fnmatchcase(e, pattern) for pattern in self.names)}


@dataclass
class Manifest:
    """What a folder's manifest records: each entry lorakit wrote with the command that wrote it,
    and the entries kept under ``--overwrite`` (the user's, never touched)."""

    files: dict[str, str] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            files, kept = raw["files"], raw.get("kept", [])
            if not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
                    and isinstance(kept, list) and all(_plain(name) for name in [*files, *kept])):
                raise ValueError("unexpected contents")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise LorakitError(f"{path} is damaged (it records what lorakit wrote in {folder}); remove it and "
                               "check the folder's files by hand, or choose another folder") from None
        return cls({str(k): v for k, v in files.items()}, {str(k) for k in kept})

    def write(self, folder: Path) -> None:
        payload = {"files": dict(sorted(self.files.items())), "kept": sorted(self.kept)}
        write_text_atomic(folder / MANIFEST, json_text(payload, indent=2) + "\n")

    def owned_by(self, command: str) -> set[str]:
        return {name for name, writer in self.files.items() if writer == command}


def _plain(name: object) -> bool:
    """Whether ``name`` names an entry of the folder itself (no path that leads elsewhere)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def entries(folder: Path) -> list[str]:
    """The folder's entries, less lorakit's bookkeeping and the temporary files of atomic writes."""
    return sorted(p.name for p in folder.iterdir() if not is_bookkeeping(p.name))


def refuse_inputs(targets: Iterable[Path], inputs: Iterable[str | os.PathLike | None], command: str) -> None:
    """Refuse when an input of the command is one of the ``targets`` it writes, lies inside one,
    or holds one (a file written into an input folder changes that input)."""
    resolved = [Path(t).resolve() for t in targets]
    for given in inputs:
        if given is None or not str(given) or not Path(given).exists():
            continue
        source = Path(given).resolve()
        for target in resolved:
            if source == target or target in source.parents:
                raise LorakitError(f"{given} is an input of lorakit {command}, which would write over it at "
                                   f"{target}; choose another output path")
            if source in target.parents:
                raise LorakitError(f"{target} is inside {given}, an input of lorakit {command}, which never writes "
                                   "into its inputs; choose an output path outside it")


def _refuse_file_parents(path: Path, command: str) -> None:
    """A file where the output's folder (or one above it) should be is said before any work."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise LorakitError(f"{parent} is a file, so lorakit {command} cannot write {path} inside it; "
                                   "choose an output path in a folder")
            return


def _foreign(folder: Path, command: str, manifest: Manifest, names: list[str]) -> None:
    """The one-line refusal naming the first of ``names``, entries ``command`` may not write over."""
    writer = manifest.files.get(names[0])
    whose = f"was written by lorakit {writer}" if writer else f"was not written by lorakit {command}"
    raise LorakitError(f"{folder / names[0]} {whose}, and lorakit {command} writes only into a new or empty "
                       "folder or one it wrote; choose another folder, or pass --overwrite to write there "
                       "anyway (entries it writes are replaced, all others kept)")


def _check(folder: Path, command: str, overwrite: bool, legacy: Legacy | None,
           writes: Collection[str] = ()) -> tuple[Manifest, set[str], list[str]]:
    """``(manifest, owned, others)`` of an output folder: ``others`` are the entries ``command``
    did not write, less those kept under an earlier ``--overwrite`` that it does not mean to write
    (``writes``); refused unless ``overwrite``."""
    _refuse_file_parents(folder, command)
    if folder.exists() and not folder.is_dir():
        raise LorakitError(f"{folder} is a file; lorakit {command} writes a folder there: give a folder path")
    if not folder.is_dir():
        return Manifest(), set(), []
    manifest, owned, others = _survey(folder, command, legacy, writes)
    if others and not overwrite:
        _foreign(folder, command, manifest, others)
    return manifest, owned, others


def _survey(folder: Path, command: str, legacy: Legacy | None,
            writes: Collection[str] = ()) -> tuple[Manifest, set[str], list[str]]:
    """``(manifest, owned, others)`` of the existing folder ``folder`` (see ``_check``)."""
    manifest, present = Manifest.read(folder), entries(folder)
    owned = manifest.owned_by(command)
    if not manifest.files and legacy is not None:
        owned = legacy.adopted(folder, present)
    tolerated = manifest.kept - set(writes)
    return manifest, owned, [name for name in present if name not in owned and name not in tolerated]


def refuse_removal(folder: Path, command: str, legacy: Legacy | None, why: str) -> None:
    """Refuse to remove ``folder`` as ``command``'s output unless every entry in it is
    ``command``'s (``why``: the reason it would be removed, for the message)."""
    if folder.is_symlink() or not folder.is_dir():
        raise LorakitError(f"{folder} is not a folder lorakit {command} wrote, so {why} does not remove it; "
                           "remove it yourself or choose another output folder")
    manifest, owned, others = _survey(folder, command, legacy)
    if not owned or others or manifest.kept:
        name = (others or sorted(manifest.kept) or ["(nothing of its own)"])[0]
        raise LorakitError(f"{folder / name} was not written by lorakit {command}, so {why} does not remove "
                           f"{folder}; move it out, or choose another output folder")


def claim(folder: str | os.PathLike, command: str, outputs: Collection[str], *, overwrite: bool = False,
          inputs: Iterable[str | os.PathLike | None] = (), legacy: Legacy | None = None) -> Path:
    """Make ``folder`` writable for ``command``, which will write the entries ``outputs`` there.

    Refuses (one line, nothing written) an input among the outputs, a file at ``folder``, and
    any entry ``command`` did not write (see the module docstring); then creates the folder and
    records ``outputs`` as the command's in its manifest. Claiming again is a no-op.
    """
    folder = Path(folder)
    refuse_inputs([folder / name for name in outputs], inputs, command)
    manifest, owned, others = _check(folder, command, overwrite, legacy, outputs)
    wanted = {name: command for name in outputs}
    kept = (manifest.kept | set(others)) - set(wanted)
    if folder.is_dir() and manifest.files.items() >= wanted.items() and kept == manifest.kept:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    Manifest({**manifest.files, **{name: command for name in owned}, **wanted}, kept).write(folder)
    return folder


def check_replace(folder: str | os.PathLike, command: str, *, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike | None] = (), legacy: Legacy | None = None) -> None:
    """What ``replace_folder`` checks first, for a command to say before it does any work (an old
    copy that a killed write left aside is put back first, and checked with the rest)."""
    _replaceable(Path(folder).resolve(), command, overwrite, inputs, legacy)


def _replaceable(folder: Path, command: str, overwrite: bool, inputs: Iterable[str | os.PathLike | None],
                 legacy: Legacy | None) -> tuple[Manifest, set[str], list[str]]:
    """``_check`` of a whole-folder output, after its inputs and a put-back old copy."""
    refuse_inputs([folder], inputs, command)
    remove_stale(folder)  # first: an old copy put back is checked like any folder
    return _check(folder, command, overwrite, legacy)


@contextlib.contextmanager
def replace_folder(folder: str | os.PathLike, command: str, *, overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike | None] = (), legacy: Legacy | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success its contents become ``folder``, with a
    manifest naming them as ``command``'s.

    ``folder`` must be absent, empty or hold only what ``command`` wrote there (else a one-line
    refusal, before the caller does any work). Then the new folder replaces the old one in one
    rename (``atomic_directory``). Under ``overwrite`` with other entries present, the new entries
    are moved in one by one instead, replacing those of the same names and keeping the rest. An
    entry kept by an earlier ``--overwrite`` that the new write has turned out to name is refused
    then, after the work but before anything moves (which names a write makes is known only once
    it is made).
    """
    folder = Path(folder).resolve()  # "." has no name to put a sibling beside; a link: write where it points
    manifest, owned, _ = _replaceable(folder, command, overwrite, inputs, legacy)
    keep = set(entries(folder)) - owned if folder.is_dir() else set()  # not this command's: never removed
    if not keep:
        with atomic_directory(folder, owned) as tmp:
            yield tmp
            Manifest(dict.fromkeys(entries(tmp), command)).write(tmp)
        return
    with _staging(folder) as tmp:
        yield tmp
        _publish(tmp, folder, command, manifest, owned, keep, overwrite)


def _publish(tmp: Path, folder: Path, command: str, manifest: Manifest, owned: set[str], keep: set[str],
             overwrite: bool) -> None:
    """Move the entries of ``tmp`` into ``folder`` one by one: replace the command's own entries
    (removing those it no longer writes), keep every other entry, and record both in the manifest.
    An entry kept earlier that would now be replaced needs ``overwrite``."""
    written = set(entries(tmp))
    if not overwrite and written & keep:
        _foreign(folder, command, manifest, sorted(written & keep))
    fsync_tree(tmp)
    for name in sorted(written):
        _move_into(tmp / name, folder / name)
    for name in owned - written:  # what an earlier write of this command left and this one did not write
        remove_path(folder / name)
    others = {k: v for k, v in manifest.files.items() if k in keep - written}
    Manifest({**others, **dict.fromkeys(written, command)}, (keep - written) - set(others)).write(folder)


@contextlib.contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A temporary folder beside ``folder`` (removed afterwards, whatever happens)."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=temporary_prefix(folder), suffix=".tmp"))
    try:
        yield tmp
    except OSError as exc:
        raise write_error(folder, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(source: Path, target: Path) -> None:
    """Put ``source`` at ``target``, replacing a file or folder of that name (a link itself, never
    what it points to)."""
    if target.is_dir() and not target.is_symlink():
        remove_path(target)
    os.replace(source, target)


def check_new_file(path: str | os.PathLike, command: str, flag: str, *, overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse a single-file output that is a folder, one of the command's inputs, or (unless
    ``overwrite``) an existing file: with no folder of its own there is no manifest to prove that
    lorakit wrote it."""
    path = Path(path)
    _refuse_file_parents(path, command)
    if path.is_dir():
        raise LorakitError(f"{flag} {path} is a folder; give the path of a file to write")
    refuse_inputs([path], inputs, command)
    if path.exists() and not overwrite:
        raise LorakitError(f"{flag} {path} already exists; choose a new file, or pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise LorakitError(f"{flag} {path}: the folder {path.parent} does not exist; create it first")
    return path
