"""Sequence-classification heads (``task.type: classification | regression``).

A transformers ``*ForSequenceClassification`` model is a base model (``model.base_model_prefix``:
``bert``, ``model``, ...) plus a head: its other children with parameters (``classifier``,
``score``). The head trains in full next to the adapter (``method.train_modules``; by default the
head of a sequence classifier), is saved in the adapter file and restored by ``lorakit.load``.

A load that had to initialise modules anew (the checkpoint lacks their weights: a fresh head, a
missing pooler) records their names on the model (``NEW_MODULES``); a training run draws them
again from its own seed, so that the seeds of a comparison that shares one loaded base differ in
their heads as in their adapters, and a run gives the same result with or without a shared base.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NEW_MODULES = "lorakit_new_modules"  # attribute of a loaded model: the modules its checkpoint did not hold


def is_sequence_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is one of transformers' ``*ForSequenceClassification`` models."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values())


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """The head of a sequence classifier (its children with parameters other than the base model)
    and the modules its load initialised anew; ``()`` for other models."""
    if not is_sequence_classifier(model):
        return ()
    base = getattr(model, "base_model_prefix", "")
    head = [name for name, child in model.named_children()
            if name != base and any(True for _ in child.parameters())]
    return tuple(dict.fromkeys([*head, *getattr(model, NEW_MODULES, ())]))


def mark_new_modules(model: nn.Module, missing_keys: Any) -> None:
    """Record the modules that own the parameters a load reported missing (``NEW_MODULES``)."""
    owners = sorted({key.rsplit(".", 1)[0] for key in missing_keys if "." in key})
    setattr(model, NEW_MODULES, tuple(name for name in owners if _is_module(model, name)))


def _is_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


@torch.no_grad()
def reseed_new_modules(model: nn.Module, seed: int) -> None:
    """Initialise the ``NEW_MODULES`` again (the model's own ``_init_weights``) from ``seed``."""
    names = getattr(model, NEW_MODULES, ())  # only set by lorakit's loads of transformers models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            model.get_submodule(name).apply(model._init_weights)


def task_record(model: nn.Module) -> dict[str, Any] | None:
    """What an adapter records of its model's task: ``{"type", "labels"}`` for a sequence
    classifier (labels in class order; none for regression), ``None`` for a causal LM."""
    if not is_sequence_classifier(model):
        return None
    config = model.config
    if config.problem_type == "regression" or config.num_labels == 1:
        return {"type": "regression", "labels": []}
    return {"type": "classification", "labels": [str(config.id2label[i]) for i in range(config.num_labels)]}
