"""Preference pairs: one prompt, a chosen and a rejected answer (for ``train.objective: dpo``).

A record is one of

- ``{"prompt": str, "chosen": str, "rejected": str}`` — each side becomes a prompt/completion
  sample (the answer is the completion);
- ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` — the answers are
  assistant turns that continue the prompt's conversation;
- ``{"chosen": [messages], "rejected": [messages]}`` — two whole conversations that share every
  turn before their last assistant turn (the implicit prompt) and differ in that turn.

A pair is encoded as two ordinary examples whose labels cover the answer alone (for a
conversation, its last assistant turn), so the sum of the labelled tokens' log-probabilities is
``log π(answer | prompt)``. The collator puts the chosen answers first and the rejected second in
one batch of ``2n`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..errors import LorakitError
from .conversation import Reading, check_messages, check_object, check_turns, read_conversation, with_system
from .tokens import IGNORE_INDEX, Encoded

SIDES = ("chosen", "rejected")
PREFERENCE_HINT = ("a preference record needs 'chosen' and 'rejected' (and a 'prompt' unless both are whole "
                   "conversations)")
# a pair is encoded with the loss on the answer, the last assistant turn (``loading._encode_pairs``)
ANSWER = "last_assistant"


def parse_preference(row: Any, where: str, reading: Reading) -> dict[str, Any]:
    """``{"chosen": sample, "rejected": sample}`` of one record (see the module docstring)."""
    row = check_object(row, where, PREFERENCE_HINT)
    missing = [side for side in SIDES if side not in row]
    if missing:
        raise LorakitError(f"{where} has no {missing[0]!r} answer; {PREFERENCE_HINT}")
    prompt = row.get("prompt")
    if all(isinstance(row[side], str) for side in SIDES):
        if not isinstance(prompt, str) or not prompt.strip():
            raise LorakitError(f"{where} has text answers but no text 'prompt'; give the prompt they answer")
        for side in SIDES:
            if not row[side].strip():
                raise LorakitError(f"{where} has an empty {side!r} answer")
        return {side: {"prompt": prompt, "completion": row[side]} for side in SIDES}
    if prompt is None:
        return _implicit_prompt(row, where, reading.system_prompt)
    return _explicit_prompt(prompt, row, where, reading.system_prompt)


def _explicit_prompt(prompt: Any, row: Mapping[str, Any], where: str, system_prompt: str | None) -> dict[str, Any]:
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    check_messages(prompt, f"{where}, prompt", answered=False)
    pair = {}
    for side in SIDES:
        answer = row[side]
        if isinstance(answer, str):
            answer = [{"role": "assistant", "content": answer}]
        check_turns(answer, f"{where}, {side}")
        if any(message["role"] != "assistant" for message in answer):
            raise LorakitError(f"{where}, {side}: the answer holds a non-assistant turn; put every turn before the "
                               "answer in 'prompt'")
        pair[side] = {"messages": with_system([*prompt, *answer], system_prompt)}
    return pair


def _implicit_prompt(row: Mapping[str, Any], where: str, system_prompt: str | None) -> dict[str, Any]:
    reading = Reading(system_prompt, loss_on=ANSWER)
    pair = {side: {"messages": read_conversation(row[side], f"{where}, {side}", reading)} for side in SIDES}
    for side in SIDES:
        if row[side][-1]["role"] != "assistant":
            raise LorakitError(f"{where}, {side} does not end with an assistant turn (the answer being compared)")
    if _turns(row["chosen"][:-1]) != _turns(row["rejected"][:-1]):
        raise LorakitError(f"{where}: 'chosen' and 'rejected' differ before their last assistant turn; two "
                           "answers to one prompt are compared (give a 'prompt' with the shared turns)")
    return pair


def _turns(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(message["role"], message["content"]) for message in messages]


def encode_pair(pair: Mapping[str, Any], encode_side: Callable[[Mapping[str, Any]], Encoded]) -> dict[str, Encoded]:
    """Both answers of ``pair`` encoded by ``encode_side`` (labels on the answer alone)."""
    return {side: encode_side(pair[side]) for side in SIDES}


def answered(pair: Mapping[str, Encoded]) -> bool:
    """Whether both answers keep at least one labelled token after the cut at ``max_length``."""
    return all(any(label != IGNORE_INDEX for label in pair[side]["labels"]) for side in SIDES)


class PairCollator:
    """Pairs → one batch of ``2n`` rows: the ``n`` chosen answers, then the ``n`` rejected ones."""

    def __init__(self, collate: Callable[[Sequence[Encoded]], dict[str, torch.Tensor]]) -> None:
        self.collate = collate

    def __call__(self, pairs: Sequence[Mapping[str, Encoded]]) -> dict[str, torch.Tensor]:
        return self.collate([pair[side] for side in SIDES for pair in pairs])
