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
from .conversation import check_messages, with_system
from .preference import parse_preference

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
    return "prompt_completion" if "completion" in sample else "text"


def _text_field(row: Mapping[str, Any], field: str, where: str, hint: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise LorakitError(f"{where} has {'no' if value is None else 'an empty or non-text'} {field!r} field; {hint}")
    return value


def parse_messages(row: Mapping[str, Any], where: str, system_prompt: str | None,
                   roles: Mapping[str, str] | None = None, answered: bool = True) -> dict[str, Any]:
    messages = row.get("messages")
    check_messages(messages, where, answered)
    return {"messages": with_system(list(messages), system_prompt)}


def parse_sharegpt(row: Mapping[str, Any], where: str, system_prompt: str | None,
                   roles: Mapping[str, str] | None = None, answered: bool = True) -> dict[str, Any]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise LorakitError(f"{where} has no conversation turns; 'conversations' must be a list of {{from, value}}")
    known = {**SHAREGPT_ROLES, **(roles or {})}
    messages = []
    for index, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, Mapping) else None
        if speaker not in known:
            raise LorakitError(f"{where}, message {index} has from={speaker!r}; use one of "
                               f"{', '.join(known)}, or name it in data.roles")
        message = {"role": known[speaker], "content": turn.get("value")}
        if "train" in turn:
            message["train"] = turn["train"]  # checked with the rest by check_messages
        messages.append(message)
    check_messages(messages, where, answered)
    return {"messages": with_system(messages, system_prompt)}


def parse_prompt_completion(row: Mapping[str, Any], where: str, system_prompt: str | None,
                            roles: Mapping[str, str] | None = None, answered: bool = True) -> dict[str, str]:
    hint = "a prompt_completion record needs non-empty 'prompt' and 'completion' strings"
    return {"prompt": _text_field(row, "prompt", where, hint),
            "completion": _text_field(row, "completion", where, hint)}


def parse_text(row: Mapping[str, Any], where: str, system_prompt: str | None,
               roles: Mapping[str, str] | None = None, answered: bool = True) -> dict[str, str]:
    return {"text": _text_field(row, "text", where, "a text record needs a non-empty 'text' string")}


# (row, where, system_prompt, sharegpt roles, whether a conversation needs an assistant turn) → sample
PARSERS: dict[str, Callable[..., dict[str, Any]]] = {
    "messages": parse_messages, "sharegpt": parse_sharegpt,
    "prompt_completion": parse_prompt_completion, "text": parse_text, "preference": parse_preference,
}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise unknown("data format", name, FORMATS)
    return name
