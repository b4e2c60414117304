"""What a slow command says while it works, and where its time went.

Every phase that can take more than a moment (loading a model, calibrating an init, evaluating,
generating, training, saving, merging, writing a file) starts with one line on stderr, such as
``lorakit: evaluating the loss on 100 records``, and shows a bar where it has steps.

``Timer`` adds up the seconds of named phases with exclusive accounting: a phase that starts
inside another one pauses it, so the phases' seconds plus ``other`` (time in no phase) equal the
timer's wall time. Phases are reported to every timer that is open in the current context (a
run's own timer and the command's), so deep code (``evaluate_loss``) names its phase without
being handed a timer.

``quiet()`` hides the lines and bars for what runs inside it, lorakit's and those of
transformers (``--quiet``, ``progress=False``); ``lines_hidden()`` hides the lines alone (a
sweep shows its own line per run instead of each run's phases). Both are context variables, so
they hold for the calling thread or task and end with the block.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

_bars_shown: ContextVar[bool] = ContextVar("lorakit_bars_shown", default=True)
_lines_shown: ContextVar[bool] = ContextVar("lorakit_lines_shown", default=True)
_timers: ContextVar[tuple[Timer, ...]] = ContextVar("lorakit_timers", default=())


def shown() -> bool:
    """Whether bars show here: not inside ``quiet()``, and in the first process of a
    data-parallel run only."""
    return _bars_shown.get() and int(os.environ.get("RANK", "0")) == 0


def say(line: str) -> None:
    """Print ``lorakit: line`` on stderr, above any open bar (nothing inside ``quiet()``)."""
    if shown() and _lines_shown.get():
        tqdm.write(f"lorakit: {line}", file=sys.stderr)


def bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, hidden inside ``quiet()``."""
    return tqdm(iterable, disable=not shown(), dynamic_ncols=True, file=sys.stderr, **kwargs)


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Inside the block, no lines and no bars (``on``), transformers' included; ``quiet(False)``
    changes nothing."""
    if not on:
        yield
        return
    from transformers.utils import logging as hf_logging

    token, was_enabled = _bars_shown.set(False), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        _bars_shown.reset(token)
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def lines_hidden() -> Iterator[None]:
    """Inside the block, bars but no phase lines."""
    token = _lines_shown.set(False)
    try:
        yield
    finally:
        _lines_shown.reset(token)


@contextlib.contextmanager
def third_party_output_hidden() -> Iterator[None]:
    """Inside ``quiet()``, swallow what the block writes to stderr: for libraries whose bars
    ignore transformers' switch (its GGUF de-quantizer uses a plain tqdm). Outside it, nothing."""
    if shown():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def phase(name: str, line: str | None = None) -> Iterator[None]:
    """Charge the block's seconds to phase ``name`` of every open timer, after saying ``line``."""
    if line:
        say(line)
    timers = _timers.get()
    previous = [timer.switch(name) for timer in timers]
    try:
        yield
    finally:
        for timer, before in zip(timers, previous, strict=True):
            timer.switch(before)


class Timer:
    """Seconds per phase of one command or run (exclusive: see the module docstring).

    ``began``: the wall-clock time (``time.time()``) the timer counts from; default now. Time
    before the timer opened is charged to the phase ``start``.
    """

    def __init__(self, began: float | None = None) -> None:
        now = time.time()
        self.began = now if began is None else min(began, now)
        self.seconds: dict[str, float] = {"start": now - self.began} if began is not None else {}
        self.current: str | None = None
        self.mark = now

    def __enter__(self) -> Timer:
        self._token = _timers.set((*_timers.get(), self))
        return self

    def __exit__(self, *exc: object) -> None:
        _timers.reset(self._token)

    def switch(self, name: str | None) -> str | None:
        """Charge the time since the last switch to the current phase, make ``name`` current and
        return the phase it replaced."""
        now = time.time()
        key = self.current or "other"
        self.seconds[key] = self.seconds.get(key, 0.0) + now - self.mark
        previous, self.current, self.mark = self.current, name, now
        return previous

    def record(self) -> dict[str, Any]:
        """``{"seconds": wall time so far, "phase_seconds": {phase: seconds, ..., "other": ...}}``,
        rounded to 0.01 s; the phases add up to the wall time."""
        self.switch(self.current)
        seconds = dict(self.seconds)
        seconds["other"] = seconds.pop("other", 0.0)  # last, and always there
        return {"seconds": round(time.time() - self.began, 2),
                "phase_seconds": {name: round(value, 2) for name, value in seconds.items()}}

    def line(self) -> str:
        """``done in 203.4 s (load 3.5 s, train 36.0 s, ...)``: phases of a second or more."""
        record = self.record()
        parts = [f"{name} {value:.1f} s" for name, value in record["phase_seconds"].items() if value >= 1]
        return f"done in {record['seconds']:.1f} s" + (f" ({', '.join(parts)})" if parts else "")


def process_started() -> float | None:
    """When this process started (``time.time()`` units), where the system says; else None."""
    try:
        import psutil  # accelerate's dependency, so present wherever lorakit is

        return psutil.Process().create_time()
    except (ImportError, OSError):
        return None
