"""The built-in verifiable task ``arithmetic``: word problems with exact numeric answers, made by
lorakit (no file, the same records for a seed), for online reinforcement learning
(``train.objective: grpo`` with the ``lorakit.rewards:exact_number`` reward).

Each record is a one-turn conversation: the user asks a problem of one operation on two numbers
(addition or subtraction of numbers up to 99, or multiplication of numbers up to 12) and ends
with "Give the answer as a number."; the assistant turn is the answer, e.g. ``"42"``, which is the
reference the reward reads (and what supervised training would learn).
"""

from __future__ import annotations

import random
from typing import Any

BUILTIN_ARITHMETIC = ("arithmetic", "builtin:arithmetic")
RECORDS = 2000
ITEMS = ("apples", "marbles", "books", "coins", "stamps", "pencils", "cards", "shells")
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
ASK = " Give the answer as a number."


def _problem(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(("add", "subtract", "multiply"))
    if kind == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == "subtract":
        a = rng.randint(10, 99)
        b = rng.randint(1, a - 1)
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"{name} has {a} boxes with {b} {item} in each. How many {item} are there in all?", a * b


def arithmetic_records(count: int = RECORDS, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` problems as one-turn conversations, the same for a ``seed``."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        question, answer = _problem(rng)
        records.append({"messages": [{"role": "user", "content": question + ASK},
                                     {"role": "assistant", "content": str(answer)}]})
    return records
