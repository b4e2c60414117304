"""Finding the ``nn.Linear`` modules an adapter attaches to.

``targets`` is one of:
- a list of module-name suffixes (``["q_proj", "v_proj"]`` matches ``...self_attn.q_proj``);
- ``"all-linear"``: every ``nn.Linear`` except the LM head (the output embedding);
- any other string: a regular expression that must match the whole module name; a string
  without regex characters is read as a single suffix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .conv1d import Conv1D, Conv1DView
from .core.options import Option
from .errors import LorakitError
from .quantized import is_quantized

ALL_LINEAR = "all-linear"
_REGEX_CHARS = set(".*+?[](){}|^$\\")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# the attention projections under other names (by config.model_type): what DEFAULT_TARGETS means there
_BERT_ATTENTION = ("query", "key", "value", "attention.output.dense")
ATTENTION_NAMES = {
    "bert": _BERT_ATTENTION, "roberta": _BERT_ATTENTION, "xlm-roberta": _BERT_ATTENTION, "electra": _BERT_ATTENTION,
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "attention.output.dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"), "gpt2": ("c_attn", "attn.c_proj"),
}


def normalise_targets(value: object) -> str | tuple[str, ...]:
    """``targets`` as stored: a string as given, any other collection of names as a tuple (a set
    sorted)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(sorted(value)) if isinstance(value, (set, frozenset)) else tuple(value)
    raise LorakitError(f"targets must be a list of module-name suffixes, a regex or 'all-linear', got {value!r}")


TARGETS = Option("targets", object, DEFAULT_TARGETS, "module-name suffixes, a regex of whole names, or "
                 "'all-linear' (every nn.Linear but the LM head); the default means the attention projections "
                 "under their names in BERT-style and GPT-2 models too", normalise=normalise_targets,
                 null_is_default=False)


def _matcher(targets: str | Sequence[str]):
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return lambda name: True
        if not (_REGEX_CHARS & set(targets)):
            targets = [targets]
        else:
            try:
                pattern = re.compile(targets)
            except re.error as exc:
                raise LorakitError(f"targets regex {targets!r} is invalid: {exc}") from None
            return lambda name: pattern.fullmatch(name) is not None
    suffixes = list(targets)
    if not suffixes or not all(isinstance(s, str) and s for s in suffixes):
        raise LorakitError(
            f"targets must be module-name suffixes, a regex or 'all-linear', got {targets!r}"
        )
    return lambda name: any(_has_suffix(name, s) for s in suffixes)


def _has_suffix(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _under_suffix(name: str, suffixes: Sequence[str]) -> bool:
    """Whether ``name`` or a module above it ends with one of ``suffixes``."""
    parts = name.split(".")
    return any(_has_suffix(".".join(parts[:i]), s) for i in range(1, len(parts) + 1) for s in suffixes)


def find_targets(model: nn.Module, targets: str | Sequence[str],
                 keep_out: Sequence[str] = ()) -> list[tuple[str, nn.Linear]]:
    """The ``(name, module)`` pairs of the ``nn.Linear`` layers (plain or bitsandbytes-quantized) and
    GPT-2 ``Conv1D`` layers (as ``Conv1DView``, see ``lorakit.conv1d``) that ``targets`` selects,
    none inside a module named by a suffix in ``keep_out`` (the ``train_modules``, trained whole).

    The default targets (Llama's attention projections) mean the attention projections of the
    architectures in ``ATTENTION_NAMES`` (BERT's ``query``, ``key``, ...)."""
    if tuple(targets) == DEFAULT_TARGETS and not isinstance(targets, str):
        targets = ATTENTION_NAMES.get(getattr(getattr(model, "config", None), "model_type", None), targets)
    matches = _matcher(targets)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = [
        (name, Conv1DView(module) if isinstance(module, Conv1D) else module)
        for name, module in model.named_modules()
        if (type(module) is nn.Linear or is_quantized(module) or isinstance(module, Conv1D))
        and module is not head and matches(name) and not _under_suffix(name, keep_out)
    ]
    unmatched = [s for s in targets if not any(_has_suffix(n, s) for n, _ in found)] \
        if not isinstance(targets, str) else ([] if found else [targets])
    if unmatched:
        linear_names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
        )
        what = f"targets {targets!r} match" if not found else f"target {unmatched[0]!r} of {targets!r} matches"
        hint = ""
        if isinstance(targets, str) and _REGEX_CHARS & set(targets):
            hint = " (a string with regex characters must match whole module names; use a list for suffixes)"
        elif head is not None and any(n == s or n.endswith("." + s) for s in unmatched
                                      for n, m in model.named_modules() if m is head):
            hint = " (the LM head is never adapted)"
        raise LorakitError(
            f"{what} no adaptable nn.Linear layer of this model{hint}; "
            f"its linear layers end in: {', '.join(linear_names) or 'none'}"
        )
    return found


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
