"""LoRA-drop's layer importance and selection (Zhou et al. 2024, arXiv 2402.07721; seed 002).

Importance of adapted layer ``i`` over a sample: ``I_i = E_x ‖ΔW_i x_i‖²`` — the mean squared norm
of the adapter's output ``s·B A x_i`` per token — normalised so that ``Σ I_i = 1``. Selection:
sort descending and keep the smallest prefix whose cumulative importance reaches the threshold
``T`` (default 0.9), or the ``n`` most important layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

DEFAULT_THRESHOLD = 0.9


class ImportanceAccumulator:
    """Running ``Σ ‖ΔW_i x_i‖²`` and token count per layer, fed by forward hooks on the adapted
    layers (``hook(name)``). ``ΔW_i x_i`` is measured without adapter dropout (and without
    drawing random numbers, so the training run's random stream is untouched). With
    ``training_only`` a forward without gradients (evaluation, generation) is not counted, so
    evaluations that run during the warm-up do not add the eval split to the sample. Every position of a batch counts, padding
    included (a forward hook does not see the attention mask)."""

    def __init__(self, training_only: bool = False) -> None:
        self.totals: dict[str, float] = {}
        self.tokens: dict[str, int] = {}
        self.training_only = training_only

    def hook(self, name: str) -> Any:
        @torch.no_grad()
        def record(layer: Any, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.training_only and not output.requires_grad:  # a forward that builds no graph
                return
            dropout, training = layer.form.dropout, layer.form.dropout.training
            dropout.eval()
            try:
                delta = layer.form.low_rank(args[0]).to(torch.float32)
            finally:
                dropout.train(training)
            self.totals[name] = self.totals.get(name, 0.0) + float(delta.square().sum())
            self.tokens[name] = self.tokens.get(name, 0) + delta[..., 0].numel()
        return record

    def importance(self) -> dict[str, float]:
        """``I_i``, normalised to sum 1 (equal shares when every adapter is still zero)."""
        means = {name: self.totals[name] / max(self.tokens[name], 1) for name in self.totals}
        norm = sum(means.values())
        return {name: (value / norm if norm > 0 else 1.0 / len(means)) for name, value in means.items()}


@torch.no_grad()
def output_importance(adapter: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """``I_i`` (normalised to sum 1) of every layer of ``adapter``, over the model inputs ``batches``
    (keyword arguments of the model's forward, e.g. ``{"input_ids": ...}``)."""
    accumulator = ImportanceAccumulator()
    handles = [layer.register_forward_hook(accumulator.hook(name)) for name, layer in adapter.layers.items()]
    try:
        for batch in batches:
            adapter.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return accumulator.importance()


def select_layers(importance: dict[str, float], threshold: float | None = DEFAULT_THRESHOLD,
                  top_n: int | None = None) -> list[str]:
    """The kept layers, most important first: the top ``top_n``, or else the smallest prefix whose
    cumulative importance is at least ``threshold``."""
    ranked = sorted(importance, key=lambda name: importance[name], reverse=True)
    if top_n is not None:
        return ranked[:top_n]
    if threshold is None or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    kept, cumulative = [], 0.0
    for name in ranked:
        kept.append(name)
        cumulative += importance[name]
        if cumulative >= threshold - 1e-12:
            break
    return kept
