"""Building the pieces of a run from its config: the model and the encoded examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..data import Collator, encode_all, load_records, split_records
from ..models import load_model


def prepare_model(config: RunConfig, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
    """The base model (frozen, on ``device``) and its tokenizer."""
    model, tokenizer = load_model(config.model.path, dtype=config.model.dtype, device=device)
    return model, tokenizer


Split = tuple[list[dict[str, str]], list[dict[str, str]]]


def load_split(config: RunConfig) -> Split:
    """The train and eval records (read and checked before any model is loaded)."""
    d = config.data
    return split_records(load_records(d.path), d.train_size, d.eval_size, d.offset, d.shuffle_seed)


def prepare_data(config: RunConfig, tokenizer: Any, split: Split | None = None) -> tuple[list[dict], list[dict], Callable]:
    """Encoded train and eval examples (response-only labels) and the batch collator."""
    d = config.data
    train_records, eval_records = split if split is not None else load_split(config)
    train_examples = encode_all(train_records, tokenizer, d.template, d.max_length)
    eval_examples = encode_all(eval_records, tokenizer, d.template, d.max_length)
    return train_examples, eval_examples, Collator(tokenizer)
