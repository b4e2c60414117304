"""Fully sharded data parallelism for ``lorakit train`` (``train.fsdp``): torch's FSDP2.

Each decoder layer (the model's ``_no_split_modules``) and then the whole model go through
``fully_shard``: every process keeps ``1/n`` of every weight, gradient and Adam moment, and
gathers a layer's weights only while it runs. The adapter's parameters live inside the layers, so
they are sharded with them; its recipes and schedules run on the shards (``DTensor`` operations),
and what is saved is gathered whole (``Adapter.state_dict``). FSDP averages gradients over the
processes like DDP, so the loop's loss normalisation (all tokens of the step) is unchanged.

With ``train.fsdp`` checkpoints hold the whole optimizer state keyed by parameter name
(``get_optimizer_state_dict(full_state_dict=True)``, gathered on the first process), so the run
resumes on any number of processes, and a resumed run loads it back into the shards
(``set_optimizer_state_dict``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapter import Adapter
from ..errors import LorakitError


def shard(model: nn.Module) -> None:
    """``fully_shard`` every decoder layer, then the model (so ``generate`` gathers too)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = set(getattr(model, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in blocks]
    if not layers:
        raise LorakitError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules) to shard by; "
                           "train it without train.fsdp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    if model.can_generate():  # a sequence classifier has no generate
        register_fsdp_forward_method(model, "generate")


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, named: bool) -> dict[str, Any]:
    """The optimizer's state as a checkpoint stores it. ``named`` (``train.fsdp``): whole and keyed
    by parameter name (``get_optimizer_state_dict``; gathered on the first process, a collective
    when the model is sharded), so it loads into any number of processes."""
    if not named:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))


def load_optimizer_state(adapter: Adapter, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         named: bool) -> None:
    """Restore ``optimizer_state`` (every process read the same full state). torch creates the
    sharded state with one zero-gradient step, which is no training step for the adapter."""
    by_name = any(isinstance(key, str) for key in state.get("state", {}))
    if state.get("state") and by_name != named:
        raise LorakitError("the checkpoint was written " + ("with" if by_name else "without") + " train.fsdp; "
                           "resume with train.fsdp set as in the interrupted run")
    if not named:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    with adapter.steps_paused():
        set_optimizer_state_dict(adapter.model, optimizer, state, options=StateDictOptions(full_state_dict=True))
