"""The example configs shipped inside the package (``lorakit/examples/*.yaml``), for users who
installed lorakit with pip and have no ``configs/`` folder: ``lorakit example`` lists them and
``lorakit example NAME [OUT]`` writes one. Each file's first comment line says what it is, the
second how to run it.
"""

from __future__ import annotations

from pathlib import Path

from .errors import unknown
from .io.atomic import write_text_atomic
from .io.ownership import check_new_file

FOLDER = Path(__file__).resolve().parent / "examples"


def example_names() -> list[str]:
    """The shipped examples, by name."""
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def example_text(name: str) -> str:
    """The YAML of example ``name`` (a one-line error, with did-you-mean, for an unknown one)."""
    if name not in example_names():
        raise unknown("example", name, example_names())
    return (FOLDER / f"{name}.yaml").read_text(encoding="utf-8")


def summary(name: str) -> str:
    """What example ``name`` is: its first comment line."""
    return example_text(name).splitlines()[0].lstrip("# ").strip()


def example_list() -> str:
    """``lorakit example``: every example with what it is."""
    width = max(map(len, example_names()))
    lines = [f"{name.ljust(width)}  {summary(name)}" for name in example_names()]
    return "\n".join([*lines, "", "lorakit example NAME [OUT] writes one (default ./NAME.yaml)."])


def write_example(name: str, out: str | None = None, overwrite: bool = False) -> Path:
    """Write example ``name`` to ``out`` (default ``./NAME.yaml``), never over an existing file
    unless ``overwrite``; the path written."""
    text = example_text(name)
    path = check_new_file(out or f"{name}.yaml", "example", "OUT", overwrite=overwrite)
    write_text_atomic(path, text)
    return path
