"""Strict JSON for every file lorakit writes: NaN and ±inf, which JSON cannot spell, become
``null`` (no number), and ``allow_nan=False`` guarantees that nothing else slips through."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in nested dicts, lists and tuples too) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``finite(value)`` with ``allow_nan=False`` (keywords: ``indent`` and the like)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
