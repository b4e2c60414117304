"""The calibration phase of a data-aware init: what the frozen base model's target layers see on a
few batches of the run's own data, gathered once before step 0 (``Init.reads``).

``inputs``: for each target layer, from its input vectors ``x`` accumulated over every batch: the
token count ``n``, the mean ``μ`` and the centred covariance ``C = (Σ x xᵀ − n μ μᵀ) / (n − 1)``
(EVA). ``scaled_inputs``: the mean over sequences of ``X_sᵀ X_s / max(X_s)²`` (``X_s``: one
sequence's inputs, scaled by their largest entry as CorDA's reference implementation does). Each
init declares the one it reads, so only that ``in × in`` sum is held per distinct input. Tokens
that do not count are left out: padding (``attention_mask`` 0) and,
where ``labels`` has one entry per token, the positions it masks (``-100``: the prompt of an SFT
record), as PEFT's EVA does by default.

``gradients``: for each target layer, the mean over batches of the gradient of the model's loss
(the batch's mean, as the model computes it from ``labels``) with respect to its full weight
``W`` (``(out, in)``, float32), in eval mode (no dropout: the same for a seed), with only the
target weights requiring gradients; every ``requires_grad`` is restored afterwards (LoRA-GA).

Memory: the sums live on the model's device in ``calibration_dtype`` (float64 by default, exact
enough to match PEFT; float32 halves it). Inputs: one ``in × in`` matrix per distinct layer input
(q, k and v share one, so do gate and up); gradients: one matrix per target weight. For a
Llama-2-7B with all seven projections adapted that is 5.5 G numbers for inputs (44 GB in float64,
22 GB in float32) and 6.5 G for gradients; with the default targets (q, k, v, o) 1.1 G and 2.1 G
(the table in ``docs/methods/eva.md``).

``weights``: for each quantized target layer, the full-precision weight it was quantized from,
read again from the model's checkpoint (``lorakit.source_weights``), with the layer's own
quantizer (LoftQ's ``q``). It reads no batches, and it is gathered again when a saved adapter is
loaded: the base is rewritten from it (``FullPrecision``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.options import Option
from ..errors import LorakitError

INPUTS, SCALED_INPUTS, GRADIENTS, WEIGHTS = "inputs", "scaled_inputs", "gradients", "weights"
IGNORED = -100
INIT_BATCHES = Option("init_batches", int, 16, "batches of the run's training data the init reads before step 0 "
                      "(the run's batch size; the first ones of the seeded order)", minimum=1)
CALIBRATION_DTYPE = Option("calibration_dtype", str, "float64", "the dtype of the calibration sums (float32 halves "
                           "their memory: one in × in matrix per layer input, or one per weight for gradients)",
                           choices=("float64", "float32"))
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class InputStatistics:
    """The running sums of one layer's inputs: ``outer`` (Σ x xᵀ, for ``inputs``) or ``scaled_outer``
    (for ``scaled_inputs``), in ``dtype``."""

    scaled: bool = False
    dtype: torch.dtype = torch.float64
    count: int = 0
    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None
    sequences: int = 0
    scaled_outer: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add one sequence's input vectors ``x`` (tokens, in)."""
        x = x.detach().to(self.dtype)
        if self.total is None:
            self.total = x.new_zeros(x.shape[1])
            if self.scaled:
                self.scaled_outer = x.new_zeros(x.shape[1], x.shape[1])
            else:
                self.outer = x.new_zeros(x.shape[1], x.shape[1])
        if x.shape[0] == 0:
            return
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.sequences += 1
        if self.scaled:
            self.scaled_outer += (x.T @ x) / x.max().abs().clamp_min(torch.finfo(x.dtype).tiny) ** 2
        else:
            self.outer += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """The centred covariance ``C`` (in the calibration dtype)."""
        mean = self.mean
        return (self.outer - self.count * torch.outer(mean, mean)) / max(self.count - 1, 1)


def kept_tokens(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """A boolean mask of the tokens whose inputs count (``None``: all of them)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    keep = None if mask is None else mask.bool()
    labels = batch.get("labels")
    if labels is not None and labels.shape == ids.shape:
        keep = (labels != IGNORED) if keep is None else keep & (labels != IGNORED)
    return keep


@torch.no_grad()
def input_statistics(model: nn.Module, targets: list[tuple[str, nn.Module]],
                     batches: Iterable[Mapping[str, torch.Tensor]], dtype: torch.dtype = torch.float64,
                     scaled: bool = False) -> dict[str, InputStatistics]:
    """Each target layer's input statistics over ``batches`` (forwards of ``model`` in eval mode,
    hooks removed afterwards, the model's mode restored). Layers called one after the other on one
    input tensor (q, k and v; gate and up) share one statistics object, gathered once."""
    statistics = {name: InputStatistics(scaled, dtype) for name, _ in targets}
    current: dict[str, Any] = {"keep": None, "last": None}
    shared: set[str] = set()

    def hook(name: str) -> Any:
        def gather(module: nn.Module, args: tuple[Any, ...]) -> None:
            x, keep, last = args[0], current["keep"], current["last"]
            if name in shared:
                return
            if last is not None and last[0] is x and current["first"]:
                statistics[name] = statistics[last[1]]
                shared.add(name)
                return
            current["last"] = (x, name)
            x = x.reshape(-1, *x.shape[-2:])  # (sequences, tokens, in)
            for row, inputs in enumerate(x):
                statistics[name].add(inputs if keep is None or keep.shape != x.shape[:-1]
                                     else inputs[keep[row].to(x.device)])
        return gather

    # the modules the model calls (a GPT-2 Conv1D target is found as a Linear view of it)
    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name, _ in targets]
    training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for number, batch in enumerate(batches):
            current.update(keep=kept_tokens(batch), first=number == 0)
            model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")})
            current["last"] = None
    finally:
        current["last"] = None
        for handle in handles:
            handle.remove()
        model.train(training)
    empty = [name for name, found in statistics.items() if found.count < 2]
    if empty:
        raise LorakitError(f"the calibration batches gave layer {empty[0]!r} fewer than 2 tokens; give the "
                           "data-aware init more data (method.init_batches)")
    return statistics


def weight_gradients(model: nn.Module, targets: list[tuple[str, nn.Module]],
                     batches: Iterable[Mapping[str, torch.Tensor]],
                     dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Each target layer's mean gradient ``∂L/∂W`` over ``batches`` (``(out, in)``, float32)."""
    from ..quantized import is_quantized

    quantized = [name for name, module in targets if is_quantized(module)]
    if quantized:
        raise LorakitError(f"layer {quantized[0]!r} is quantized, and a gradient-based init needs the gradient of a "
                           "full-precision weight; load the base unquantized for this init")
    weights = {name: model.get_submodule(name).weight for name, _ in targets}
    shapes = {name: tuple(module.weight.shape) for name, module in targets}  # (out, in), a Conv1D's view too
    trainable = {param: param.requires_grad for param in model.parameters()}
    training = model.training
    sums = {name: torch.zeros(shapes[name], dtype=dtype, device=w.device) for name, w in weights.items()}
    count = 0
    try:
        model.eval()
        for param in trainable:
            param.requires_grad_(False)
        for weight in weights.values():
            weight.requires_grad_(True)
        device = next(model.parameters()).device
        for batch in batches:
            if "labels" not in batch:
                raise LorakitError("a gradient-based init needs batches with labels (the model's loss)")
            grads = torch.autograd.grad(model(**{k: v.to(device) for k, v in batch.items()}).loss,
                                        list(weights.values()))
            for name, grad in zip(weights, grads):
                sums[name] += (grad if grad.shape == shapes[name] else grad.T).to(dtype)  # Conv1D: (in, out)
            count += 1
    finally:
        for param, flag in trainable.items():
            param.requires_grad_(flag)
        model.train(training)
    return {name: (total / max(count, 1)).to(torch.float32) for name, total in sums.items()}


def layer_data(data: Any, expected: type, init: str) -> Any:
    """A layer's calibration ``data`` as init ``init`` expects it, or the one-line error of a
    data-aware init given none (its ``factors`` called outside ``attach(..., init_data=...)``)."""
    if not isinstance(data, expected):
        raise LorakitError(f"init {init!r} reads a few training batches before step 0; pass init_data= to attach "
                           "(lorakit train, compare and tune pass the run's own)")
    return data


@dataclass
class FullPrecision:
    """A quantized layer's weight before quantization and its quantizer.

    ``weight``: float32 ``(out, in)``; ``quantize``: ``W ↦ dequantize(quantize(W))`` in the layer's
    format. ``residual``: set by an init that quantizes into the base another pair than the one it
    starts the adapter on (LoftQ: ``(B_{T−1}, A_{T−1})``); ``None``: the adapter's own pair.
    """

    weight: torch.Tensor
    quantize: Callable[[torch.Tensor], torch.Tensor]
    residual: tuple[torch.Tensor, torch.Tensor] | None = None


# the base's codes may differ from the checkpoint's quantization by the float16 cast of an int8
# load; more than this (relative Frobenius norm) means the base is not that checkpoint
SOURCE_TOLERANCE = 1e-3


@torch.no_grad()
def full_precision(model: nn.Module, targets: list[tuple[str, nn.Module]]) -> dict[str, FullPrecision]:
    """Each quantized target's ``FullPrecision`` (plain targets have none), checked against the base:
    quantizing the checkpoint's weight must give the layer's own (else the base is not that checkpoint)."""
    from ..quantized import dequantized, is_quantized, quantization_roundtrip
    from ..source_weights import full_precision_weights

    quantized = {name: module for name, module in targets if is_quantized(module)}
    if not quantized:
        return {}
    sources = {}
    for name, weight in full_precision_weights(model, quantized).items():
        layer = quantized[name]
        own = dequantized(layer)
        if weight.shape != own.shape or (quantization_roundtrip(layer, weight) - own).norm() \
                > SOURCE_TOLERANCE * own.norm():
            raise LorakitError(f"layer {name!r} is not the quantization of its checkpoint's weight; LoftQ needs the "
                               "base as loaded from its checkpoint (attach before changing it)")
        sources[name] = FullPrecision(weight.to(own.device), functools.partial(quantization_roundtrip, layer))
    return sources


GATHERERS = {INPUTS: input_statistics, SCALED_INPUTS: functools.partial(input_statistics, scaled=True),
             GRADIENTS: weight_gradients}
"""What each kind of ``Init.reads`` that reads batches gathers, from ``(model, targets, batches, dtype)``
(``weights`` reads none: ``full_precision``)."""
