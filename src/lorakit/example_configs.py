"""The example configs shipped inside the package (``lorakit/examples/*.yaml``), for users who
installed lorakit with pip and have no ``configs/`` folder: ``lorakit example`` lists them and
``lorakit example NAME [OUT]`` writes one. Each file's first comment line says what it is, the
second how to run it.

Every preset is an example too (``lorakit example dora``): the quickstart (the embedded SmolLM2
on the built-in chatterbot pairs) with that method at its own defaults, which the defaults test
holds to learning (``tests/test_defaults_learn.py``).
"""

from __future__ import annotations

from pathlib import Path

from .errors import unknown
from .io.atomic import write_text_atomic
from .io.ownership import check_new_file

FOLDER = Path(__file__).resolve().parent / "examples"


def example_names() -> list[str]:
    """The shipped examples, by name (the presets' examples not included: ``method_names``)."""
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def example_text(name: str) -> str:
    """The YAML of example ``name``, or of preset ``name``'s (a one-line error, with did-you-mean,
    for an unknown one)."""
    from .presets import method_names

    if name in method_names() and name not in example_names():
        return method_example(name)
    if name not in example_names():
        raise unknown("example", name, [*example_names(), *method_names()])
    return (FOLDER / f"{name}.yaml").read_text(encoding="utf-8")


def method_example(preset: str) -> str:
    """The quickstart with ``preset`` at its own defaults, training into ``runs/<preset>`` (on an NF4
    base for an init that fits a quantized one: LoftQ)."""
    from .presets import parts_of, resolve

    lines = (FOLDER / "quickstart.yaml").read_text(encoding="utf-8").splitlines()
    if parts_of(resolve(preset)).init.quantized_only:
        lines.insert(lines.index("model:") + 2, "  quantize: nf4  # this init fits the adapter to a quantized base")
    start = lines.index("method:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    head = [f"# {preset} on the embedded SmolLM2 and the built-in chatterbot pairs, at the preset's defaults",
            f"#   lorakit train {preset}.yaml", f"# then: lorakit chat --adapter runs/{preset}/adapter"]
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))  # after the quickstart's own header
    body = [*lines[first:start], "method:", f"  name: {preset}", *lines[end:]]
    return "\n".join([*head, *body]).replace("runs/quickstart", f"runs/{preset}") + "\n"


def summary(name: str) -> str:
    """What example ``name`` is: its first comment line."""
    return example_text(name).splitlines()[0].lstrip("# ").strip()


def example_list() -> str:
    """``lorakit example``: every example with what it is."""
    width = max(map(len, example_names()))
    lines = [f"{name.ljust(width)}  {summary(name)}" for name in example_names()]
    return "\n".join([*lines, "", "and every method preset (lorakit methods): the quickstart with that method, e.g. "
                       "lorakit example dora", "", "lorakit example NAME [OUT] writes one (default ./NAME.yaml)."])


def write_example(name: str, out: str | None = None, overwrite: bool = False) -> Path:
    """Write example ``name`` to ``out`` (default ``./NAME.yaml``), never over an existing file
    unless ``overwrite``; the path written."""
    text = example_text(name)
    path = check_new_file(out or f"{name}.yaml", "example", "OUT", overwrite=overwrite)
    write_text_atomic(path, text)
    return path
