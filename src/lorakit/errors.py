"""The one exception type lorakit raises for bad input.

Every message is a single line that names the problem and what to do about it; the CLI
prints it and exits with code 2, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LorakitError(ValueError):
    """Bad input: a one-line message naming the problem and the fix."""


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest of ``choices``, or '' (``word`` may be any
    value a YAML key can be)."""
    choices = list(choices)
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> LorakitError:
    """The error for a name that is not one of ``choices``."""
    choices = sorted(choices)
    return LorakitError(
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}"
    )
