"""Method options, each declared once next to the component it belongs to.

An ``Option`` carries its name, type, default, range and a one-line help text. The method spec
composes the options of its four components (plus the adapter's own: ``targets``, ``seed``);
``lorakit methods NAME``, the CLI's method notes and the docs' option tables are generated from
these declarations. A default may be *derived* from other options or from the run (the number
of adapted layers, the number of optimizer steps): ``derive`` computes it once those are known,
and ``default_text`` says how in the docs.

The run's own keys (``train.*``, ``data.*``, ``model.*``, ``eval.*``, ``task.*``; ``lorakit.config``)
are declared as ``Option`` too, with two more facts: the package a value ``needs`` and whether the
key is ``free_on_resume`` (changes nothing that is trained, so a resumed run may change it).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import LorakitError, did_you_mean, unknown

# what a derived default may read besides the other options: "layers" (the number of adapted
# layers, known at attach) and "total_steps" (the run's optimizer steps, known to `lorakit train`)
RunContext = Mapping[str, int]
Derive = Callable[[Mapping[str, Any], RunContext], Any]


def plain(value: Any) -> Any:
    """A numpy (or torch) scalar as the Python number it holds; anything else unchanged."""
    if type(value).__module__ in ("numpy", "torch") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


@dataclass(frozen=True)
class Option:
    """One method option.

    Args:
        name: the key in ``attach(**options)`` and in a config's ``method`` section.
        type: ``int``, ``float``, ``bool`` or ``str`` (``object`` with ``normalise`` for targets).
        default: the value when none is given (``None`` where ``None`` itself has a meaning,
            e.g. ``pissa_niter``: the exact SVD, or where ``derive`` supplies it).
        help: one line for the CLI and the docs.
        minimum, maximum: the range of a number; ``open_minimum``/``open_maximum`` exclude the bound.
        choices: the allowed strings.
        label: the name in error messages, when it needs the paper's symbol.
        requirement: the range as error messages state it, when not derived from the bounds.
        hint: appended to a range error.
        derive: computes the default from the other options and the run (see ``RunContext``).
        default_text: the derived default as the docs show it.
        normalise: checks and converts values of ``type`` ``object``.
        null_is_default: a given ``None`` means "the default" (else it is checked, and refused).
        needs: ``(value, module, install)``: the value works only where ``module`` imports
            (``install`` says how to get it, e.g. ``pip install "lorakit[qlora]"``).
        free_on_resume: a resumed run may change it (logging, saving, exact speed options).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    open_maximum: bool = False
    choices: tuple[str, ...] | None = None
    label: str | None = None
    requirement: str | None = None
    hint: str = ""
    derive: Derive | None = None
    default_text: str | None = None
    normalise: Callable[[Any], Any] | None = None
    null_is_default: bool = True
    needs: tuple[tuple[str, str, str], ...] = ()
    free_on_resume: bool = False

    def requirement_text(self) -> str:
        """What a valid value is, e.g. ``a positive integer`` or ``a number in [0, 1)``."""
        if self.requirement:
            return self.requirement
        if self.type is bool:
            return "true or false"
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.type is int:
            return "a positive integer" if (self.minimum or 0) >= 1 else "a non-negative integer"
        if self.type is float:
            if self.maximum is not None:
                low, high = "(" if self.open_minimum else "[", ")" if self.open_maximum else "]"
                return f"a number in {low}{self.minimum:g}, {self.maximum:g}{high}"
            if self.minimum not in (None, 0):
                return f"a finite number {'>' if self.open_minimum else '≥'} {self.minimum:g}"
            return "a positive finite number" if self.open_minimum else "a non-negative finite number"
        return {str: "text", dict: "a mapping"}.get(self.type, f"a {self.type.__name__}")

    def check(self, value: Any) -> Any:
        """``value`` as stored (numpy scalars as numbers, ints as floats for float options), or a
        one-line error naming the option and its range. ``None`` passes (the default applies)."""
        value = plain(value)
        if value is None and self.null_is_default:
            return None
        if self.normalise is not None:
            return self.normalise(value)
        if self.choices is not None:
            if value not in self.choices and self.label is None:
                raise unknown(self.name, str(value), self.choices)
            if value not in self.choices:
                raise LorakitError(f"{self.label} must be one of {', '.join(self.choices)}, got {value!r}"
                                   f"{did_you_mean(str(value), self.choices)}")
            return self._available(value)
        if self.type is bool:
            if isinstance(value, bool):
                return value
        elif self.type in (int, float):
            kinds = (int, float) if self.type is float else (int,)
            if isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) \
                    and self._in_range(value):
                return float(value) if self.type is float else value
        elif isinstance(value, self.type):
            return value
        hint = f"; {self.hint}" if self.hint else ""
        raise LorakitError(f"{self.label or self.name} must be {self.requirement_text()}, got {value!r}{hint}")

    def _available(self, value: Any) -> Any:
        """``value``, where the package it needs imports (else a one-line error saying how to get it)."""
        for needing, module, install in self.needs:
            if value == needing and importlib.util.find_spec(module) is None:
                raise LorakitError(f"{self.label or self.name} {value} needs the {module} package; {install}")
        return value

    def _in_range(self, value: float) -> bool:
        low, high = self.minimum, self.maximum
        above = low is None or (value > low if self.open_minimum else value >= low)
        below = high is None or (value < high if self.open_maximum else value <= high)
        return above and below

    def default_doc(self) -> str:
        """The default as the docs and ``lorakit methods NAME`` show it."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "null"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, tuple):
            return "[" + ", ".join(self.default) + "]"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def type_doc(self) -> str:
        """The type and range in a few words, for tables."""
        if self.normalise is not None:
            return "list or string"
        return self.requirement_text()
