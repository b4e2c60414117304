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


def attach(model: torch.nn.Module, method, **overrides):
    """``lorakit.attach`` as the per-preset tests call it: a preset whose init reads data (EVA,
    CorDA, LoRA-GA) gets ``init_batches`` batches of random token ids of the model's vocabulary,
    seeded, with labels (the ids, or classes for a classifier)."""
    import lorakit
    from lorakit.presets import parts_of, resolve

    spec = resolve(method, **overrides)
    if not parts_of(spec).init.reads:
        return lorakit.attach(model, spec)
    generator = torch.Generator().manual_seed(1234)
    vocab, classifier = model.config.vocab_size, type(model).__name__.endswith("ForSequenceClassification")
    data = []
    for _ in range(spec.init_batches):
        ids = torch.randint(0, vocab, (2, 16), generator=generator)
        labels = torch.randint(0, model.config.num_labels, (2,), generator=generator) if classifier else ids
        data.append({"input_ids": ids, "labels": labels})
    return lorakit.attach(model, spec, init_data=data)


def script(name: str):
    """The module ``scripts/<name>.py`` of this repository, loaded (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_precision_methods() -> list[str]:
    """Every preset but those whose init fits a quantized base only (LoftQ: ``tests/test_loftq.py``)."""
    import lorakit
    from lorakit.presets import parts_of, resolve

    return [m for m in lorakit.methods() if not parts_of(resolve(m)).init.quantized_only]
