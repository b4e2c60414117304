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


def prepare_data(config: RunConfig, tokenizer: Any) -> tuple[list[dict], list[dict], Callable]:
    """Encoded train and eval examples (response-only labels) and the batch collator."""
    d = config.data
    records = load_records(d.path)
    train_records, eval_records = split_records(records, d.train_size, d.eval_size, d.offset, d.shuffle_seed)
    train_examples = encode_all(train_records, tokenizer, d.template, d.max_length)
    eval_examples = encode_all(eval_records, tokenizer, d.template, d.max_length)
    return train_examples, eval_examples, Collator(tokenizer)
