"""Reward functions for online reinforcement learning (``train.objective: grpo``).

A reward function takes the sampled completions and, for each, the reference answer of the record
its prompt came from (the output, completion or last assistant turn; ``None`` where the record has
none), and returns one finite number per completion:

    def my_reward(completions: list[str], references: list[str | None]) -> list[float]: ...

``train.rewards`` maps each by import path, ``module:function`` (the module on ``sys.path``, as
``python -m`` finds it), to its weight: ``{lorakit.rewards:exact_number: 1.0,
lorakit.rewards:short: 0.1}``. A completion's reward is the weighted sum.

Built in, for verifiable tasks:

- ``exact_number``: 1 when the last number in the completion equals the last number in the
  reference (``"… so 12 + 30 = 42"`` against ``"42"``), else 0;
- ``format``: 1 when the completion's last line is an answer line (``Answer: <number>``), else 0;
- ``short``: ``−(characters / 100)``, a length penalty.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import LorakitError

Reward = Callable[[list[str], list[str | None]], Sequence[float]]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
ANSWER_LINE = re.compile(r"^answer:\s*-?\d+(?:\.\d+)?\s*$", re.IGNORECASE)


def last_number(text: str | None) -> float | None:
    """The last number written in ``text`` (commas between digits ignored), or None."""
    found = NUMBER.findall((text or "").replace(",", ""))
    return float(found[-1]) if found else None


def exact_number(completions: list[str], references: list[str | None]) -> list[float]:
    """1.0 where the completion's last number is the reference's last number, else 0.0."""
    scores = []
    for completion, reference in zip(completions, references, strict=True):
        expected, given = last_number(reference), last_number(completion)
        scores.append(float(expected is not None and given is not None and given == expected))
    return scores


def format(completions: list[str], references: list[str | None]) -> list[float]:  # noqa: A001 - a reward's name
    """1.0 where the completion ends with an ``Answer: <number>`` line, else 0.0."""
    return [float(bool(ANSWER_LINE.match(c.strip().splitlines()[-1].strip())) if c.strip() else False)
            for c in completions]


def short(completions: list[str], references: list[str | None]) -> list[float]:
    """``−len(completion) / 100``: shorter completions score higher."""
    return [-len(c) / 100 for c in completions]


@dataclass(frozen=True)
class WeightedReward:
    """A reward function with its import path (its name in the logs) and weight."""

    path: str
    function: Reward
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.path.rpartition(":")[2]

    def __call__(self, completions: list[str], references: list[str | None]) -> list[float]:
        """The function's scores, checked: one finite number per completion."""
        try:
            scores = [float(s) for s in self.function(completions, references)]
        except LorakitError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's function: its error, in one line
            said = str(exc).splitlines()[0] if str(exc) else ""
            raise LorakitError(f"reward {self.path} raised {type(exc).__name__}: {said}; fix the reward function "
                               "(the run stopped before this step; its checkpoints are intact)") from None
        if len(scores) != len(completions):
            raise LorakitError(f"reward {self.path} returned {len(scores)} scores for {len(completions)} completions; "
                               "return one number per completion")
        bad = next((s for s in scores if not math.isfinite(s)), None)
        if bad is not None:
            raise LorakitError(f"reward {self.path} returned {bad}; return finite numbers")
        return scores


def load_reward(path: str, weight: float = 1.0) -> WeightedReward:
    """The reward function at the import path ``module:function``, with its weight."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise LorakitError(f"train.rewards: the weight of {path} is {weight!r}; give a finite number")
    if not isinstance(path, str) or path.count(":") != 1:
        raise LorakitError(f"train.rewards entry {path!r} is not an import path; write module:function, e.g. "
                           "lorakit.rewards:exact_number")
    module_name, function_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LorakitError(f"train.rewards: module {module_name!r} of {path} does not import ({exc}); put it on "
                           "the Python path (PYTHONPATH) or fix its name") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise LorakitError(f"train.rewards: {module_name} has no function {function_name!r}; name a function "
                           "(completions, references) -> scores")
    return WeightedReward(path, function, float(weight))


def load_rewards(weights: Mapping[str, float]) -> list[WeightedReward]:
    """Every ``train.rewards`` entry (import path → weight), imported and checked (before any model loads)."""
    if not weights:
        raise LorakitError("train.objective grpo needs train.rewards: reward functions and their weights, e.g. "
                           "{lorakit.rewards:exact_number: 1.0}")
    rewards = [load_reward(path, weight) for path, weight in weights.items()]
    names = [r.name for r in rewards]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise LorakitError(f"train.rewards has two functions named {twice!r}; each name is a column of the logs, "
                           "so give them different names")
    return rewards
