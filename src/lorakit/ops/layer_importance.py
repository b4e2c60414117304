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


@torch.no_grad()
def output_importance(adapter: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """``I_i`` (normalised to sum 1) of every layer of ``adapter``, over the model inputs ``batches``
    (keyword arguments of the model's forward, e.g. ``{"input_ids": ...}``)."""
    totals = {name: 0.0 for name in adapter.layers}
    tokens = {name: 0 for name in adapter.layers}

    def recorder(name: str):
        def hook(layer: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            delta = layer.form.low_rank(inputs[0]).to(torch.float32)
            totals[name] += float(delta.square().sum())
            tokens[name] += delta[..., 0].numel()
        return hook

    handles = [layer.register_forward_hook(recorder(name)) for name, layer in adapter.layers.items()]
    try:
        for batch in batches:
            adapter.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    means = {name: totals[name] / max(tokens[name], 1) for name in totals}
    norm = sum(means.values())
    return {name: (value / norm if norm > 0 else 1.0 / len(means)) for name, value in means.items()}


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
