"""Reading YAML config files with one-line errors (and a key given twice refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import LorakitError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last value silently, so `lr: 0` above `lr: 1e-3` would go unnoticed)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: list[Any] = []
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping, or a one-line error (missing, a folder, not UTF-8,
    invalid YAML with its line, not a mapping)."""
    path = Path(path)
    if path.is_dir():
        raise LorakitError(f"config file {path} is a folder; pass a YAML file")
    if not path.is_file():
        raise LorakitError(f"config file {path} does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise LorakitError(f"config file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", "") or "")
        if problem.startswith("duplicate key"):
            raise LorakitError(f"config file {path} gives the {problem[len('duplicate '):]} twice{where}; "
                               "keep one") from None
        raise LorakitError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise LorakitError(f"config file {path} must hold a mapping of sections")
    return raw
