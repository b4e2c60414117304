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

from ..core.protocol import AdapterView

DEFAULT_THRESHOLD = 0.9


class ImportanceAccumulator:
    """Running ``Σ ‖ΔW_i x_i‖²`` and token count per layer, fed by forward hooks on the adapted
    layers (``attach``). ``ΔW_i x_i`` is measured without adapter dropout (and without drawing
    random numbers, so the training run's random stream is untouched). Padding does not count: a
    pre-hook on the model keeps the forward's ``attention_mask``, which weights the positions.
    With ``training_only`` a forward without gradients (evaluation, generation) is not counted,
    so evaluations that run during the warm-up do not add the eval split to the sample."""

    def __init__(self, training_only: bool = False) -> None:
        # float64 tensors on the layers' device, added without a host sync: ``pending`` is this
        # process's since the last ``sync``, ``totals``/``tokens`` the sums over all processes up
        # to it (the same on every process; what importance() reads and checkpoints keep)
        self.totals: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, torch.Tensor] = {}
        self.pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.training_only = training_only
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def attach(self, adapter: AdapterView) -> None:
        """Register the hooks on ``adapter``'s model and layers (replacing any from an earlier
        ``attach``, so attaching twice never records twice)."""
        def keep_mask(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.mask = kwargs.get("attention_mask")

        self.detach()
        self._handles = [adapter.model.register_forward_pre_hook(keep_mask, with_kwargs=True)]
        self._handles += [layer.register_forward_hook(self.hook(name)) for name, layer in adapter.layers.items()]

    def detach(self) -> None:
        """Remove the hooks (nothing to do when none are registered)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

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
            squares = delta.square().sum(-1)  # ‖ΔW x‖² per position
            if self.mask is not None and self.mask.shape == squares.shape:
                weights = self.mask.to(squares.dtype)
                total, count = (squares * weights).sum(), weights.sum()
            else:
                total, count = squares.sum(), squares.new_tensor(squares.numel())
            old_total, old_count = self.pending.get(name, (0.0, 0.0))
            self.pending[name] = (old_total + total.double(), old_count + count.double())
        return record

    def sync(self) -> None:
        """Add every process's pending sums to the totals (an all-reduce when data-parallel, called by
        every process at the same point: each saw its own batches), so all processes hold, and
        select by, the sums one process with all the batches would have."""
        names = sorted(self.pending)
        if not names:
            return
        packed = torch.stack([torch.as_tensor(self.pending[name][i], dtype=torch.float64)
                              for i in (0, 1) for name in names])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        for i, name in enumerate(names):
            self.totals[name] = self.totals.get(name, 0.0) + packed[i]
            self.tokens[name] = self.tokens.get(name, 0.0) + packed[len(names) + i]
        self.pending = {}

    def importance(self) -> dict[str, float]:
        """``I_i`` from the synced sums, normalised to sum 1 (equal shares when every adapter is still
        zero)."""
        means = {name: float(self.totals[name]) / max(float(self.tokens[name]), 1.0) for name in self.totals}
        norm = sum(means.values())
        return {name: (value / norm if norm > 0 else 1.0 / len(means)) for name, value in means.items()}


@torch.no_grad()
def output_importance(adapter: AdapterView, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """``I_i`` (normalised to sum 1) of every layer of ``adapter``, over the model inputs ``batches``
    (keyword arguments of the model's forward, e.g. ``{"input_ids": ...}``)."""
    accumulator = ImportanceAccumulator()
    accumulator.attach(adapter)
    try:
        for batch in batches:
            adapter.model(**batch)
    finally:
        accumulator.detach()
    accumulator.sync()
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
