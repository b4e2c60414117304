"""Record formats: what one row of a data file is, and the sample lorakit makes of it.

- ``alpaca``: ``instruction``, optional ``input``, ``output`` → ``{"instruction", "input", "output"}``;
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``;
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`` →
  the same ``{"messages": [...]}`` (``from`` mapped by ``SHAREGPT_ROLES`` and ``data.roles``);
- ``prompt_completion``: ``prompt`` and ``completion`` (the loss on the completion);
- ``text``: ``text`` (plain language modelling, the loss on every token);
- ``preference``: ``chosen`` and ``rejected`` answers to one prompt (``train.objective: dpo``,
  see ``preference``);
- ``auto``: the format of the first record (every record must then have it).

A conversation may carry ``"train": false`` on a message (no loss on it); ``data.system_prompt``
is put first in conversations that have no system message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LorakitError, unknown
from .conversation import Reading, check_object, described, read_conversation
from .preference import PREFERENCE_HINT, parse_preference

FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text", "preference")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
# the key that identifies each format, in the order auto-detection tries them
SIGNATURES = {"preference": "rejected", "messages": "messages", "sharegpt": "conversations", "alpaca": "instruction",
              "prompt_completion": "completion", "text": "text"}


def detect_format(row: Any, where: str) -> str:
    """The format of one raw record, from the key that identifies it."""
    if isinstance(row, Mapping):
        for name, key in SIGNATURES.items():
            if key in row:
                return name
        if "prompt" in row:  # a prompt to answer (lorakit generate), or a pair missing its completion
            return "prompt_completion"
    keys = ", ".join(f"{key!r} ({name})" for name, key in SIGNATURES.items())
    raise LorakitError(f"{where} matches no record format; a record needs one of the keys {keys}")


def sample_kind(sample: Mapping[str, Any]) -> str:
    """The kind of a parsed sample: ``alpaca``, ``conversation``, ``prompt_completion``, ``text`` or
    ``preference``."""
    if "rejected" in sample:
        return "preference"
    if "messages" in sample:
        return "conversation"
    if "instruction" in sample:
        return "alpaca"
    return "prompt_completion" if "prompt" in sample else "text"


# what a record of each format needs, ending the one-line errors of a record that lacks it
HINTS = {
    "alpaca": "every record needs 'instruction' and 'output' (and optionally 'input')",
    "messages": "a messages record needs 'messages': a non-empty list of {role, content} objects",
    "sharegpt": "a sharegpt record needs 'conversations': a non-empty list of {from, value} objects",
    "prompt_completion": "a prompt_completion record needs non-empty 'prompt' and 'completion' strings",
    "text": "a text record needs a non-empty 'text' string",
    "preference": PREFERENCE_HINT,
}


def _text_field(row: Mapping[str, Any], field: str, where: str, hint: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise LorakitError(f"{where} has {'no' if value is None else 'an empty or non-text'} {field!r} field; {hint}")
    return value


def parse_messages(row: Any, where: str, reading: Reading) -> dict[str, Any]:
    """A ``messages`` record: its conversation, checked (``conversation.read_conversation``)."""
    row = check_object(row, where, HINTS["messages"])
    return {"messages": read_conversation(row.get("messages"), where, reading)}


def parse_sharegpt(row: Any, where: str, reading: Reading) -> dict[str, Any]:
    """A ShareGPT record: its ``conversations`` as messages (``from`` mapped to roles), checked."""
    turns = check_object(row, where, HINTS["sharegpt"]).get("conversations")
    if not isinstance(turns, list) or not turns:
        shown = "an empty list" if isinstance(turns, list) else described(turns)
        raise LorakitError(f"{where} has no conversation turns ({shown}); {HINTS['sharegpt']}")
    known = {**SHAREGPT_ROLES, **(reading.roles or {})}
    return {"messages": read_conversation([_sharegpt_message(turn, index, where, known)
                                           for index, turn in enumerate(turns)], where, reading)}


def _sharegpt_message(turn: Any, index: int, where: str, known: Mapping[str, str]) -> dict[str, Any]:
    """One ShareGPT turn as a message (its ``train`` flag is checked with the rest by ``check_messages``)."""
    turn = check_object(turn, f"{where}, message {index}", "every turn has a 'from' and a 'value'")
    speaker = turn.get("from")
    if speaker not in known:
        raise LorakitError(f"{where}, message {index} has from={speaker!r}; use one of "
                           f"{', '.join(known)}, or name it in data.roles")
    message = {"role": known[speaker], "content": turn.get("value")}
    if "train" in turn:
        message["train"] = turn["train"]
    return message


def parse_prompt_completion(row: Any, where: str, reading: Reading) -> dict[str, str]:
    """A prompt/completion record: both texts (``reading.answered`` False: the completion may be
    absent, for generation)."""
    hint = HINTS["prompt_completion"]
    row = check_object(row, where, hint)
    fields = ("prompt", "completion") if reading.answered or row.get("completion") is not None else ("prompt",)
    return {field: _text_field(row, field, where, hint) for field in fields}


def parse_text(row: Any, where: str, reading: Reading) -> dict[str, str]:
    """A plain-text record: its text."""
    row = check_object(row, where, HINTS["text"])
    return {"text": _text_field(row, "text", where, HINTS["text"])}


# (raw row, where it is in its file, how conversations are read) → sample; alpaca's is records._validate
PARSERS: dict[str, Callable[[Any, str, Reading], dict[str, Any]]] = {
    "messages": parse_messages, "sharegpt": parse_sharegpt,
    "prompt_completion": parse_prompt_completion, "text": parse_text, "preference": parse_preference,
}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise unknown("data format", name, FORMATS)
    return name
