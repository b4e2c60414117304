"""Training data: loading records (Alpaca, conversations, prompt/completion, text), splitting,
prompting and tokenising them."""

from __future__ import annotations

from .conversation import LOSS_ON, encode_conversation
from .encode import IGNORE_INDEX, Collator, encode, encode_all
from .formats import FORMATS
from .prompts import TEMPLATES, format_prompt
from .records import chatterbot_conversations, chatterbot_records, load_records, split_records

__all__ = [
    "FORMATS", "IGNORE_INDEX", "LOSS_ON", "TEMPLATES", "Collator", "chatterbot_conversations",
    "chatterbot_records", "encode", "encode_all", "encode_conversation", "format_prompt", "load_records",
    "split_records",
]
