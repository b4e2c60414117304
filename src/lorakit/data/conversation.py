"""A multi-turn conversation → token ids with the loss on the chosen assistant turns.

``encode_conversation`` renders the conversation with the tokenizer's chat template as growing
prefixes — ``messages[:1]``, ``messages[:2]``, … — and requires each rendering to be a text
prefix of the next one (a template that rewrites earlier turns is refused: the masks would be
wrong). Each new piece of text is tokenized on its own, as generation sees it: for assistant turn
``i``, the header (the rendering of ``messages[:i]`` *with* the generation prompt, minus what came
before), then the content, then the rest of the turn. The labels cover the content and the
template's end-of-turn token (the first special token after the content), never the role header or
what the template writes after the end-of-turn token (SmolLM2's ``"\n"``). Special-token strings
inside a message's content are tokenized as text, never as control tokens. This needs no
``{% generation %}`` markers, which most templates (SmolLM2's among them) lack.

``loss_on``: ``assistant`` (every assistant turn), ``last_assistant`` (the last one) or ``all``
(every token). A message with ``"train": false`` is never trained on.

``check_messages`` refuses, when the data is read and before any tokenizer loads, what this
encoding cannot do with any template: a learned assistant turn as the first message (its header
would be the rendering of no messages, which transformers refuses). Any other role order (two user
turns in a row, a system message later on) is the template's to judge: SmolLM2's renders it, a
template that insists on alternating roles refuses it when the record is encoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LorakitError, unknown
from .tokens import IGNORE_INDEX, Encoded

ROLES = ("system", "user", "assistant")
LOSS_ON = ("assistant", "last_assistant", "all")
Message = Mapping[str, Any]
TURNS_HINT = "give a non-empty list of {role, content} objects"


@dataclass(frozen=True)
class Reading:
    """How the conversations of a data file are read: ``system_prompt`` is put first where there is no
    system message, ``roles`` are more ShareGPT ``from`` names, ``answered=False`` accepts conversations
    without an assistant turn (prompts for ``lorakit generate``), and ``loss_on`` names the assistant
    turns that are learned (whose prompt, the turns before them, must not be empty)."""

    system_prompt: str | None = None
    roles: Mapping[str, str] | None = None
    answered: bool = True
    loss_on: str = "assistant"


def described(value: Any) -> str:
    """What ``value`` is, in JSON's words with an article (``a list``, ``a string``, ``null``), for messages."""
    if value is None:
        return "null"
    kinds = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"),
             (Mapping, "an object"), (list, "a list"), (tuple, "a list"))
    return next((kind for types, kind in kinds if isinstance(value, types)), f"a {type(value).__name__}")


def check_object(value: Any, where: str, hint: str) -> Mapping[str, Any]:
    """``value`` if it is an object (a mapping), else a one-line error naming ``where`` and ending with
    ``hint``; every record parser and reader checks its rows with it."""
    if not isinstance(value, Mapping):
        raise LorakitError(f"{where} is {described(value)}, not an object; {hint}")
    return value


def read_conversation(messages: Any, where: str, reading: Reading) -> list[Any]:
    """The checked messages of one record (error indices as in the file) with ``reading.system_prompt``
    put first; ``check_messages`` judges the conversation as it will be encoded."""
    check_turns(messages, where)
    conversation = with_system(list(messages), reading.system_prompt)
    check_messages(conversation, where, reading.answered, reading.loss_on)
    return conversation


def check_messages(messages: Sequence[Message], where: str = "the conversation", answered: bool = True,
                   loss_on: str = "assistant") -> None:
    """One-line errors for a conversation that cannot be used: bad messages (``check_turns``) and, when
    ``answered``, no assistant turn or an opening assistant turn that ``loss_on`` learns: the turns
    before a learned assistant turn are rendered as its prompt, and transformers renders no empty one."""
    check_turns(messages, where)
    if not answered:
        return
    if not any(message["role"] == "assistant" for message in messages):
        raise LorakitError(f"{where} has no assistant turn, so nothing to learn from; add one")
    if loss_on != "all" and 0 in _trained_turns(messages, loss_on):
        raise LorakitError(f"{where} starts with an assistant turn; a conversation starts with a system or user "
                           "message (the turns before an assistant turn are its prompt): add one, set "
                           "data.system_prompt, or mark that turn train: false")


def check_turns(messages: Any, where: str) -> None:
    """One-line errors for messages that are not a non-empty list of objects with a known role, text
    content and a true/false ``train`` flag (if any)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        shown = "an empty list" if isinstance(messages, (list, tuple)) else described(messages)
        raise LorakitError(f"{where} has no messages ({shown}); {TURNS_HINT}")
    for index, message in enumerate(messages):
        check_object(message, f"{where}, message {index}", "every message has a 'role' and a 'content'")
        if message.get("role") not in ROLES:
            raise LorakitError(f"{where}, message {index} has role {message.get('role')!r}; roles are "
                               f"{', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise LorakitError(f"{where}, message {index} has empty or non-text content; every message needs text")
        if not isinstance(message.get("train", True), bool):
            raise LorakitError(f"{where}, message {index} has train={message['train']!r}; use true or false")


def with_system(messages: list[Any], system_prompt: str | None) -> list[Any]:
    """``messages`` with ``system_prompt`` put first, unless it is empty or they have a system turn."""
    if system_prompt and messages[0].get("role") != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def encode_conversation(tokenizer: Any, messages: Sequence[Message], max_length: int,
                        loss_on: str = "assistant", where: str = "the conversation") -> Encoded:
    """``input_ids`` and ``labels`` (``-100`` where no loss) of one conversation, rendered with the
    tokenizer's chat template and cut to ``max_length`` tokens from the right.

    Args:
        tokenizer: a transformers tokenizer with a ``chat_template``.
        messages: ``[{"role": "system"|"user"|"assistant", "content": str, "train": bool?}, ...]``.
        max_length: at most this many tokens are kept (leading turns whole, the end cut).
        loss_on: ``assistant``, ``last_assistant`` or ``all``.
        where: names the conversation in error messages (e.g. ``data.json: record 3``).
    """
    if loss_on not in LOSS_ON:
        raise unknown("loss_on", loss_on, LOSS_ON)
    if not getattr(tokenizer, "chat_template", None):
        raise LorakitError("conversations need a tokenizer with a chat_template and this one has none; "
                           "use a chat model, or alpaca-format records")
    check_messages(messages, where, loss_on=loss_on)
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    trained = _trained_turns(messages, loss_on)
    input_ids: list[int] = []
    labels: list[int] = []
    text = ""
    for index in range(len(plain)):
        full = _render_text(tokenizer, plain[: index + 1], False, where)
        if index in trained and loss_on != "all":
            header = _render_text(tokenizer, plain[:index], True, where)
            _require_prefix(text, header, index, where)
            _require_prefix(header, full, index, where)
            head = _tokens(tokenizer, header[len(text):])
            answer, rest = _answer_tokens(tokenizer, full[len(header):], plain[index]["content"])
            input_ids += head + answer + rest
            labels += [IGNORE_INDEX] * len(head) + answer + [IGNORE_INDEX] * len(rest)
        else:
            _require_prefix(text, full, index, where)
            piece = _tokens(tokenizer, full[len(text):])
            input_ids += piece
            labels += piece if index in trained else [IGNORE_INDEX] * len(piece)
        text = full
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def _answer_tokens(tokenizer: Any, turn: str, content: str) -> tuple[list[int], list[int]]:
    """``turn`` (an assistant turn's text after its header) as ``(trained, rest)``: the content and
    the end-of-turn token, then whatever the template writes after it."""
    if turn.startswith(content):  # the usual case: the template writes the content as given
        body, tail = _tokens(tokenizer, content, literal=True), _tokens(tokenizer, turn[len(content):])
    else:
        body, tail = [], _tokens(tokenizer, turn)
    end = _end_of_turn(tokenizer, tail, 0)
    return body + tail[:end], tail[end:]


def _tokens(tokenizer: Any, text: str, literal: bool = False) -> list[int]:
    """``text``'s token ids; ``literal``: special-token strings in it are text, not control tokens."""
    if not text:
        return []
    extra = {"split_special_tokens": True} if literal else {}
    return list(tokenizer(text, add_special_tokens=False, **extra)["input_ids"])


def _trained_turns(messages: Sequence[Message], loss_on: str) -> set[int]:
    """The indices of the messages that carry a loss (with ``all``, every message's whole span)."""
    if loss_on == "all":
        return {i for i, m in enumerate(messages) if m.get("train", True) is not False}
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("train", True) is not False]
    if loss_on == "last_assistant":
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return {last} & set(turns)
    return set(turns)


def _render_text(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, where: str) -> str:
    if not messages and not generation_prompt:
        return ""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # templates raise their own errors (e.g. roles that must alternate)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LorakitError(f"{where}: the chat template cannot render it ({message}); fix the conversation's "
                           "roles (e.g. two user turns in a row) or use a model whose template accepts them") from None


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, where: str) -> list[int]:
    return _tokens(tokenizer, _render_text(tokenizer, messages, generation_prompt, where))


def _require_prefix(prefix: str, text: str, index: int, where: str) -> None:
    if not text.startswith(prefix):
        raise LorakitError(f"{where}: the chat template renders message {index} by changing what came before it, "
                           "so the turns cannot be masked exactly; use a template that renders conversations "
                           "as growing prefixes")


def _end_of_turn(tokenizer: Any, ids: Sequence[int], start: int) -> int:
    """The index just past the first special token after ``start`` (the end of the assistant turn),
    or the end of ``ids`` when the template closes turns with no special token. The unknown token
    is special to the tokenizer but may stand in the content."""
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    for position in range(start, len(ids)):
        if ids[position] in special:
            return position + 1
    return len(ids)


def end_of_turn_token(tokenizer: Any) -> int | None:
    """The token the chat template closes an assistant turn with (``None`` if it uses none)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    header = _render(tokenizer, probe[:1], True, "the end-of-turn probe")
    full = _render(tokenizer, probe, False, "the end-of-turn probe")
    end = _end_of_turn(tokenizer, full, len(header))
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    return full[end - 1] if full[end - 1] in special else None


def render_prompt(tokenizer: Any, messages: Sequence[Message], answer_next: bool = False) -> list[int]:
    """What generation continues from: the history before the last assistant turn (whose content is
    the reference) and the assistant header; with ``answer_next`` a conversation that ends with
    another turn is answered after it."""
    if not getattr(tokenizer, "chat_template", None):
        raise LorakitError("conversations need a tokenizer with a chat_template and this one has none; "
                           "use a chat model, or alpaca-format records")
    if answer_next and messages[-1]["role"] != "assistant":
        history = messages
    else:
        history = messages[:max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
    plain = [{"role": m["role"], "content": m["content"]} for m in history]
    return _render(tokenizer, plain, True, "the conversation")


def warn_if_never_stops(tokenizer: Any) -> None:
    """Warn when the template's end-of-turn token is not the tokenizer's eos: a model trained to end
    its turns with it would not stop generating at eos."""
    token = end_of_turn_token(tokenizer)
    if token is not None and token != tokenizer.eos_token_id:
        warnings.warn(f"the chat template ends assistant turns with {tokenizer.convert_ids_to_tokens(token)!r}, "
                      f"but the tokenizer's eos is {tokenizer.eos_token!r}: generation will not stop at the end of "
                      "a turn; set tokenizer.eos_token (and the model's generation_config.eos_token_id) to it",
                      stacklevel=2)
