"""Turning a record's instruction (and input) into the prompt text the model continues."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import LorakitError, unknown

TEMPLATES = ("alpaca", "chat")

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(record: Mapping[str, str], template: str, tokenizer: Any = None) -> str:
    """The prompt for ``record``: the Stanford Alpaca text, or the tokenizer's chat template.

    Both end where the response starts (``### Response:\\n``, or the assistant turn's opening).
    """
    instruction, extra = record["instruction"], record.get("input") or ""
    if template == "alpaca":
        if extra:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise LorakitError(
                "template 'chat' needs a tokenizer with a chat_template and this one has none; "
                "use template 'alpaca'"
            )
        content = instruction + ("\n\n" + extra if extra else "")
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             tokenize=False, add_generation_prompt=True)
    raise unknown("prompt template", template, TEMPLATES)
