"""A long study's records, small enough to commit, so that a study spanning several machines or
sessions goes on where it stopped.

``pack`` keeps what ``lorakit compare`` and ``lorakit tune`` read to skip finished work: every
finished run's ``summary.json``, ``config.yaml`` and ``metrics.jsonl``, every search's
``study.journal`` and its outputs, the base model's scores and the folders' ownership records.
It leaves out checkpoints, adapters, TensorBoard logs, plots (written again from the records) and
the searches' trial folders (the journal holds every trial), so after ``unpack`` an unfinished run
starts again from step 0 and an interrupted trial is marked failed and replaced, as after a kill.
The archive is deterministic (sorted names, no times or owners), so an unchanged study packs to
the same bytes.

    python scripts/study_state.py pack runs/study/sst2_tuned docs/results/study_sst2_tuned/state.tar.gz
    python scripts/study_state.py unpack docs/results/study_sst2_tuned/state.tar.gz runs/study/sst2_tuned
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
from pathlib import Path

LEFT_OUT = {"checkpoints", "adapter", "tensorboard", "trials"}


def kept(folder: Path) -> list[Path]:
    """The files under ``folder`` that the archive keeps, sorted."""
    return sorted(path for path in folder.rglob("*") if path.is_file()
                  and not LEFT_OUT.intersection(path.relative_to(folder).parts[:-1])
                  and not path.name.endswith((".lock", ".png")))


def pack(folder: Path, archive: Path) -> int:
    """Write the archive of ``folder``'s records atomically; the number of files in it."""
    files = kept(folder)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(archive)
    return len(files)


def unpack(archive: Path, folder: Path) -> int:
    """Extract the archive into ``folder``, refusing any file that is there already; the number of files."""
    with tarfile.open(archive, mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        there = [m.name for m in members if (folder / m.name).exists()]
        if there:
            raise SystemExit(f"error: {folder / there[0]} exists ({len(there)} files would be overwritten); "
                             "unpack into an empty or absent folder")
        tar.extractall(folder, members=members, filter="data")
    return len(members)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="archive a study folder's records")
    packing.add_argument("folder", type=Path)
    packing.add_argument("archive", type=Path)
    unpacking = commands.add_parser("unpack", help="restore a study folder's records")
    unpacking.add_argument("archive", type=Path)
    unpacking.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        if not args.folder.is_dir():
            raise SystemExit(f"error: {args.folder} is not a folder")
        count = pack(args.folder, args.archive)
        print(f"{count} files of {args.folder} -> {args.archive} ({args.archive.stat().st_size / 1024:.0f} KiB)")
    else:
        print(f"{unpack(args.archive, args.folder)} files -> {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
