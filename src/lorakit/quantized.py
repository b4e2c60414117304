"""Quantized base layers: bitsandbytes NF4 and int8 (QLoRA, Dettmers et al. 2023, arXiv 2305.14314).

A base model loaded with ``quantize: nf4 | int8`` holds ``bitsandbytes.nn.Linear4bit`` /
``Linear8bitLt`` layers; they stay quantized, and their forward stays bitsandbytes' kernel. What
lorakit needs of such a layer is here:

- ``dequantized(layer)``: the float32 weight the kernel computes with (NF4: the 4-bit codes times
  the block absmax; int8: the codes times the row scale / 127) — what inits decompose, DoRA's
  norm reads, merging starts from and the fingerprint samples;
- ``requantize(layer, W)``: put a float32 ``W`` back in the layer's own format (its quant type,
  block size and compute dtype); deterministic, so the same arithmetic on a freshly quantized
  base gives the same bits;
- ``quantization(layer)``: what a saved adapter records (type, block size, compute dtype).

bitsandbytes' CPU forward, outside training, repacks a 4-bit weight for a bfloat16 kernel
(``support_avx512bf16_for_cpu``) that computes another function (bf16 rounding) and whose layout
its own dequantization does not read back exactly. ``prepare`` turns that repacking off, so a
4-bit layer computes one function in training and evaluation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .conv1d import Conv1D
from .core.terms import Term, add_products
from .errors import LorakitError

QUANTIZE = ("none", "nf4", "int8")
EXTRA_HINT = 'pip install "lorakit[qlora]" (bitsandbytes >= 0.49)'


# bitsandbytes' CPU backend warns, whoever imports it (accelerate does), that it could not fetch an
# optional kernel from the hub: one for the bfloat16 packed path that ``prepare`` turns off
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _bnb() -> Any:
    try:
        import bitsandbytes
    except ImportError:
        raise LorakitError(f"quantized bases need bitsandbytes; {EXTRA_HINT}") from None
    return bitsandbytes


def quantized_types() -> tuple[type, ...]:
    """The bitsandbytes layer classes; none while bitsandbytes is not imported (then no layer can be
    one), so plain models never pay for importing it."""
    bitsandbytes = sys.modules.get("bitsandbytes")
    if bitsandbytes is None:
        return ()
    return (bitsandbytes.nn.Linear4bit, bitsandbytes.nn.Linear8bitLt)


def is_quantized(layer: nn.Module) -> bool:
    types = quantized_types()
    return bool(types) and isinstance(layer, types)


def quantization(layer: nn.Module) -> dict[str, Any] | None:
    """``{"type", "blocksize", "compute_dtype"}`` of a quantized layer; ``None`` for a plain one."""
    if not is_quantized(layer):
        return None
    if isinstance(layer, _bnb().nn.Linear4bit):
        state = layer.weight.quant_state
        compute = layer.compute_dtype or torch.float32
        return {"type": state.quant_type, "blocksize": state.blocksize,
                "compute_dtype": str(compute).removeprefix("torch.")}
    return {"type": "int8", "blocksize": None, "compute_dtype": "float16"}


def first_quantization(layers: Iterable[nn.Module]) -> dict[str, Any] | None:
    """``quantization`` of the first quantized layer of ``layers`` (``None`` if none is)."""
    return next((found for layer in layers if (found := quantization(layer)) is not None), None)


def prepare(layer: nn.Module, name: str) -> None:
    """Keep a 4-bit layer on bitsandbytes' exact CPU path (see the module docstring)."""
    if isinstance(layer, _bnb().nn.Linear4bit):
        if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
            raise LorakitError(f"layer {name!r} was repacked for bitsandbytes' bfloat16 CPU inference by a forward "
                               "before attach; attach right after loading (lorakit's load_model keeps it unpacked)")
        layer.support_avx512bf16_for_cpu = False


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a float tensor: dequantized for a quantized layer, else the weight itself."""
    return dequantized(layer) if is_quantized(layer) else layer.weight


@torch.no_grad()
def dequantized(layer: nn.Module) -> torch.Tensor:
    """The float32 weight a quantized layer computes with (``(out, in)``)."""
    bnb = _bnb()
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
    scale = weight.SCB if weight.SCB is not None else layer.state.SCB  # moved to the state by a forward
    return bnb.functional.int8_vectorwise_dequant(weight.data, scale).to(torch.float32)


@torch.no_grad()
def requantize(layer: nn.Module, weight: torch.Tensor) -> None:
    """Replace the layer's quantized weight by ``weight`` (float32, ``(out, in)``) quantized the same way."""
    layer.weight = _quantized_like(layer, weight)
    if not isinstance(layer, _bnb().nn.Linear4bit):
        layer.state.SCB = layer.state.CB = None  # re-read from the new weight by the next forward


@torch.no_grad()
def quantization_roundtrip(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (float32, ``(out, in)``) quantized as ``layer`` is and dequantized again, the layer
    untouched: what ``requantize`` then ``dequantized`` would give (LoftQ's ``q``)."""
    bnb = _bnb()
    fresh = _quantized_like(layer, weight)
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(fresh.data, fresh.quant_state).to(torch.float32)
    return bnb.functional.int8_vectorwise_dequant(fresh.data, fresh.SCB).to(torch.float32)


def _quantized_like(layer: nn.Module, weight: torch.Tensor) -> nn.Parameter:
    """``weight`` quantized in ``layer``'s format (quant type, block size, storage), on its device."""
    bnb = _bnb()
    old = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        state = old.quant_state
        fresh = bnb.nn.Params4bit(weight.to("cpu", state.dtype), requires_grad=False, quant_type=state.quant_type,
                                  blocksize=state.blocksize, compress_statistics=old.compress_statistics,
                                  quant_storage=old.quant_storage)
    else:
        fresh = bnb.nn.Int8Params(weight.to("cpu", torch.float16), requires_grad=False, has_fp16_weights=False)
    return fresh.to(old.device)


def add_to_base(layer: nn.Module, terms: list[Term]) -> None:
    """``W ← W + Σ c·B A`` for a base layer: in place, or for a quantized layer dequantized, added in
    float32 and requantized in its own format."""
    if not is_quantized(layer):
        add_products(layer.weight, terms)
        return
    weight = dequantized(layer)
    add_products(weight, terms)
    requantize(layer, weight)


def quantize_model(model: nn.Module, quantize: str, compute_dtype: torch.dtype,
                   keep: tuple[str, ...] = ()) -> nn.Module:
    """Quantize every linear layer but the LM head (and the modules named ``keep``: a classifier
    head) in place, as transformers' ``BitsAndBytesConfig`` loading does (for models it cannot load
    quantized, such as GGUF files)."""
    bnb = _bnb()
    head = model.get_output_embeddings()
    quantized = False
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or module is head or within(name, keep):
            continue
        if quantize == "nf4":
            new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                    compute_dtype=compute_dtype, quant_type="nf4", device="cpu")
            new.weight = bnb.nn.Params4bit(module.weight.data.to("cpu"), requires_grad=False, quant_type="nf4",
                                           compress_statistics=False)  # transformers: no double quantization
        else:
            new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=module.bias is not None,
                                      has_fp16_weights=False, threshold=6.0, device="cpu")
            new.weight = bnb.nn.Int8Params(module.weight.data.to("cpu", torch.float16), requires_grad=False,
                                           has_fp16_weights=False)
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias.data.clone(), requires_grad=False)
        new = new.to(module.weight.device)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        quantized = True
    if not quantized:
        raise LorakitError(f"{type(model).__name__} has no nn.Linear layer to quantize (GPT-2's Conv1D layers are "
                           "not quantized by lorakit); load it with model.quantize: none")
    return model


def plain_layer(layer: nn.Module, weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The unquantized layer for a quantized ``layer`` with the float ``weight`` ``(out, in)``: an
    ``nn.Linear``, or a ``Conv1D`` (weight stored ``(in, out)``) where transformers quantized one."""
    bias = None if layer.bias is None else layer.bias.detach().to(dtype)
    if getattr(layer, "source_cls", None) is Conv1D:
        plain = Conv1D(layer.out_features, layer.in_features).to(weight.device)
        plain.weight.data = weight.T.contiguous().to(dtype)
        plain.bias.data = bias if bias is not None else plain.bias.data.to(dtype).zero_()
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device=weight.device,
                          dtype=dtype)
        plain.weight.data = weight.to(dtype)
        if bias is not None:
            plain.bias.data = bias
    return plain.requires_grad_(False)


@torch.no_grad()
def dequantize_model(model: nn.Module) -> int:
    """Replace every quantized layer left in ``model`` by a float32 ``nn.Linear`` (or ``Conv1D``) of its
    dequantized weight (what a merged model is saved as); the number replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if not is_quantized(module):
            continue
        prepare(module, name)  # a layer repacked by an evaluation forward is refused, not misread
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain_layer(module, dequantized(module)))
        replaced += 1
    if getattr(model, "hf_quantizer", None) is not None:  # a model loaded with BitsAndBytesConfig
        model.hf_quantizer.remove_quantization_config(model)
    return replaced


# sequence-classification heads kept in full precision (they train whole): transformers' names
CLASSIFIER_MODULES = ("classifier", "score", "pre_classifier", "pooler", "lm_head")


def within(name: str, modules: Iterable[str]) -> bool:
    """Whether the module ``name`` is one of ``modules`` (full names) or inside one."""
    return any(name == module or name.startswith(module + ".") for module in modules)


def bitsandbytes_config(quantize: str, compute_dtype: torch.dtype, classifier: bool = False) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``quantize`` (``nf4`` or ``int8``); for a
    ``classifier``, the head modules (``CLASSIFIER_MODULES``) stay unquantized."""
    _bnb()
    from transformers import BitsAndBytesConfig

    skip = {"llm_int8_skip_modules": list(CLASSIFIER_MODULES)} if classifier else {}
    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                                  **skip)
    return BitsAndBytesConfig(load_in_8bit=True, **skip)
