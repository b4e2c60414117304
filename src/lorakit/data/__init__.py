"""Training data: loading Alpaca-format records, splitting, prompting and tokenising them."""

from __future__ import annotations

from .encode import IGNORE_INDEX, Collator, encode, encode_all
from .prompts import TEMPLATES, format_prompt
from .records import chatterbot_records, load_records, split_records

__all__ = [
    "IGNORE_INDEX", "TEMPLATES", "Collator", "chatterbot_records", "encode", "encode_all",
    "format_prompt", "load_records", "split_records",
]
