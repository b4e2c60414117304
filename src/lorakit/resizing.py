"""Changing an attached adapter's shape during training: resize or remove a layer's pair, fold
gates, and bring the optimizer in line.

Optimizer-state rule (documented in the README): after any change, ``refresh_optimizer`` rebuilds
every parameter group's list from the adapter as it is now, in the same order that
``Adapter.optimizer`` builds them (so a resumed run's fresh optimizer has the same structure);
group hyperparameters (learning rates as the LR scheduler left them, weight decay) are kept.
A parameter that survives keeps its state (moments, step count); a resized layer's new ``A``,
``B`` start with fresh state — reset for that layer only — since Adam's moments of the old
factors have no meaningful image under the QR/SVD transform.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .forms.lora import initial_scale
from .inits.base import add_products
from .targeting import set_submodule

if TYPE_CHECKING:
    from .adapter import Adapter


def resize_layer(adapter: Adapter, name: str, rank: int, generator: torch.Generator | None = None) -> None:
    """Set layer ``name`` to ``rank``: grow (``B A`` unchanged), shrink (best rank-``rank``
    approximation), or remove it (rank 0)."""
    if rank == 0:
        remove_layer(adapter, name)
    elif rank != adapter.layers[name].form.rank:
        adapter.layers[name].form.resize(rank, generator)


@torch.no_grad()
def remove_layer(adapter: Adapter, name: str) -> None:
    """Drop layer ``name``'s adapter: the plain base layer goes back into the model. For a spectral
    init the part ``s·B₀A₀`` taken out of ``W`` at attach time is put back, so the layer is the
    original one again."""
    layer = adapter.layers.pop(name)
    initial = adapter.initial.pop(name, None)
    if initial is not None:
        add_products(layer.base_layer.weight, [(*initial, initial_scale(adapter.spec))])
    adapter.removed[name] = initial  # saved, so that loading repeats this arithmetic exactly
    set_submodule(adapter.model, name, layer.base_layer)


def refresh_optimizer(adapter: Adapter, optimizer: torch.optim.Optimizer) -> None:
    """Point ``optimizer``'s groups at the adapter's current parameters (see the module docstring)."""
    fresh = adapter.param_groups(lr=0.0, weight_decay=0.0)
    names = [group.get("name") for group in optimizer.param_groups]
    if names != [group["name"] for group in fresh]:
        raise RuntimeError(f"optimizer groups {names} do not match the adapter's {[g['name'] for g in fresh]}")
    kept = {id(p) for group in fresh for p in group["params"]}
    for param in [p for p in optimizer.state if id(p) not in kept]:
        del optimizer.state[param]
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group["params"] = list(new["params"])
