"""Reading what a command printed on stderr: its status lines (``lorakit.status``) and the rest."""

from __future__ import annotations

import re

STATUS_LINE = re.compile(r"^lorakit: (?!error:)")


def status_lines(text: str) -> list[str]:
    """The lines that say what the command is doing (``lorakit: loading ...``)."""
    return [line for line in text.splitlines() if STATUS_LINE.match(line)]


def other_lines(text: str) -> list[str]:
    """Every non-empty line but the status lines: an error is one of these, and alone."""
    return [line for line in text.strip().splitlines() if line and not STATUS_LINE.match(line)]
