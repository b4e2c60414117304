"""``lorakit tune``: an Optuna search over any declared config key, measured on a validation split
(``spec``: the tune section; ``study``: storage and workers; ``trials``: one trial; ``outputs``:
what it writes; ``run``: the worker). Needs the optional extra ``lorakit[tune]`` (Optuna)."""

from __future__ import annotations

from typing import Any

from ..errors import LorakitError


def tune(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``lorakit.tune.run.tune`` (see there), or a one-line error where Optuna is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise LorakitError('lorakit tune needs Optuna; pip install "lorakit[tune]"') from None
    from .run import tune as run

    return run(*args, **kwargs)
