"""Tiny randomly initialised Llama models for fast, offline contract tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 128


def tiny_config(**overrides) -> LlamaConfig:
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A 2-layer Llama with the same weights for the same ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**overrides)).eval()


def batch(seed: int = 0, size: int = 2, length: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (size, length), generator=generator)


def tiny_bert(seed: int = 0, num_labels: int = 3):
    """A 2-layer BERT sequence classifier (head ``classifier``) with the same weights for the same
    ``seed``, in eval mode; ``num_labels=1`` is a regression head."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        problem_type="regression" if num_labels == 1 else "single_label_classification")
    return BertForSequenceClassification(config).eval()
