"""Adapters for llama.cpp and Ollama: a LoRA-adapter GGUF, or one merged GGUF.

**Adapter** (``lorakit export ADAPTER OUT --format gguf``): llama.cpp loads ``<base tensor>.lora_a``
(numpy shape ``(r, in)``) and ``.lora_b`` (``(out, r)``) pairs from a file whose ``general.type`` is
``adapter`` (``adapter.type: lora``, the base's ``general.architecture``) and adds
``(α/r_ℓ)·B A x`` to that base tensor's product, with one ``α`` (``adapter.lora.alpha``) for the
file and ``r_ℓ`` each pair's own rank. Every layer is written as its plain pair
(``as_lora``: exact for every low-rank method, DoRA by truncated SVD) with ``B' ← B'·r_ℓ/α``, so
llama.cpp's per-pair scale gives back ``B'A'`` whatever rsLoRA, rank or alpha patterns and
schedules did. Tensor names come from the ``gguf`` package's map of the architecture.

**Row order.** llama.cpp's converter stores the query and key rows of Llama-family models
(``llama``, ``mistral``) permuted for its rotary layout: within each head of ``d`` rows, the
order ``(h, 2, d/2) → (h, d/2, 2)`` (``h`` = query heads for ``q_proj``, key-value heads for
``k_proj``); transformers undoes it when it loads such a GGUF. The rows of ``B'`` for those
projections (``ΔW``'s rows) are written in the GGUF order; Qwen2 and Gemma are not permuted.

**Merged** (``lorakit merge ADAPTER OUT --format gguf``, for a base loaded from a GGUF: the
embedded model, or a ``.gguf`` file): a copy of the base GGUF (every metadata key, tokenizer and
chat template included; every tensor the adapter does not touch byte for byte) whose adapted
weights are replaced by the adapted model's dense weights (``W'``, exact for every method,
DoRA included) in ``--outtype``.

``--outtype``: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (blocks of 32 values along each row: a
tensor whose rows are not a multiple of 32 cannot take it, e.g. ``lora_b`` of rank 8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.protocol import AdapterView
from ..errors import LorakitError
from ..heads import is_sequence_classifier
from ..models import EMBEDDED, embedded_gguf_path, model_path
from ..status import bar
from .as_lora import adapted_weight, as_lora
from .json_text import json_text
from .ownership import replace_folder

# Hugging Face model_type → (the gguf package's architecture name, q/k rows permuted by llama.cpp)
ARCHITECTURES = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False),
                 "gemma": ("GEMMA", False), "gemma2": ("GEMMA2", False)}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
ADAPTER_FILE, MERGED_FILE, MODELFILE = "adapter.gguf", "model.gguf", "Modelfile"


def _gguf() -> Any:
    import gguf  # a dependency of lorakit (the embedded model is a GGUF)

    return gguf


def architecture(model: nn.Module) -> tuple[Any, bool]:
    """The gguf ``MODEL_ARCH`` of ``model`` and whether its q/k rows are permuted; refuses others."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if is_sequence_classifier(model) or kind not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise LorakitError(f"GGUF export supports causal LMs of the {known} families, not {kind!r}"
                           f"{' classifiers' if is_sequence_classifier(model) else ''}; export to PEFT "
                           "(lorakit export) or merge to a folder (lorakit merge) instead")
    name, permuted = ARCHITECTURES[kind]
    return getattr(_gguf().MODEL_ARCH, name), permuted


def rotary_order(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """``rows`` (a q or k projection's output rows, or ``ΔW``'s) in llama.cpp's rotary order."""
    per_head = rows.shape[0] // heads
    return rows.reshape(heads, 2, per_head // 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def gguf_rows(rows: torch.Tensor, name: str, config: Any, permuted: bool) -> torch.Tensor:
    """Layer ``name``'s output rows in the GGUF's order (see the module docstring)."""
    suffix = name.rsplit(".", 1)[-1]
    if not permuted or suffix not in ("q_proj", "k_proj"):
        return rows
    heads = config.num_attention_heads if suffix == "q_proj" else config.num_key_value_heads
    return rotary_order(rows, heads)


def tensor_name(names: Any, layer: str) -> str:
    """The GGUF tensor that holds layer ``layer``'s weight (``blk.0.attn_q.weight``)."""
    found = names.get_name(f"{layer}.weight", try_suffixes=(".weight",))
    if found is None:
        raise LorakitError(f"layer {layer} has no GGUF tensor name in this architecture; adapt the attention "
                           "and MLP projections only (method.targets)")
    return found


def encoded(array: np.ndarray, outtype: str, name: str) -> tuple[np.ndarray, Any]:
    """``array`` stored as ``outtype`` (bytes for quantized types) and its GGML type."""
    gguf = _gguf()
    kind = getattr(gguf.GGMLQuantizationType, outtype.upper())
    block = gguf.GGML_QUANT_SIZES[kind][0]
    if array.shape[-1] % block:
        raise LorakitError(f"--outtype {outtype} stores rows in blocks of {block} values, and {name} has rows of "
                           f"{array.shape[-1]}; use --outtype f16 (or bf16, f32)")
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind), kind


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise LorakitError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")


def _check_exportable(adapter: AdapterView) -> tuple[Any, bool]:
    found = architecture(adapter.model)
    if adapter.full_modules:
        raise LorakitError(f"a GGUF holds no whole trained modules, and this adapter trains "
                           f"{sorted(adapter.full_modules)} in full; merge it to a folder (lorakit merge)")
    return found


def adapter_tensors(adapter: AdapterView, outtype: str, rank: int | None) -> tuple[dict[str, tuple], float, dict]:
    """The adapter GGUF's tensors (name → (data, type)), its α and the ``as_lora`` record."""
    arch, permuted = _check_exportable(adapter)
    plain = as_lora(adapter, rank)
    names = _gguf().get_tensor_name_map(arch, adapter.model.config.num_hidden_layers)
    alpha = float(plain.rank)  # llama.cpp scales each pair by α / r_ℓ; r_ℓ / α is folded into B'
    tensors = {}
    for layer, (B, A) in plain.pairs.items():
        target = tensor_name(names, layer)
        B = gguf_rows(B * (B.shape[1] / alpha), layer, adapter.model.config, permuted)
        tensors[f"{target}.lora_a"] = encoded(A.numpy(), outtype, f"{target}.lora_a")
        tensors[f"{target}.lora_b"] = encoded(B.numpy(), outtype, f"{target}.lora_b")
    return tensors, alpha, plain.record()


def write_adapter_gguf(adapter: AdapterView, path: Path, outtype: str = "f16", rank: int | None = None) -> dict:
    """Write ``adapter`` as a llama.cpp LoRA adapter GGUF at ``path``; returns the ``as_lora`` record."""
    check_outtype(outtype)
    gguf = _gguf()
    tensors, alpha, record = adapter_tensors(adapter, outtype, rank)
    arch, _ = architecture(adapter.model)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    _finish(writer)
    return record


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- merged ------------------------------------------------------------------------------------
def base_gguf(base_model: str | None) -> Path:
    """The GGUF file a base was loaded from (the embedded model, or a ``.gguf`` path); refuses
    Hugging Face folders with the route that works for them."""
    path = model_path(base_model or "")
    if path == EMBEDDED:
        return embedded_gguf_path()
    if path.lower().endswith(".gguf") and Path(path).is_file():
        return Path(path)
    raise LorakitError(f"a merged GGUF is written from a GGUF base, and this adapter's base is {base_model!r}; "
                       "merge to a folder (lorakit merge ADAPTER DIR) and convert that with llama.cpp's "
                       "convert_hf_to_gguf.py, or export the adapter alone (lorakit export --format gguf)")


def write_merged_gguf(adapter: AdapterView, base: Path, path: Path, outtype: str = "f16") -> int:
    """Write the base GGUF ``base`` with ``adapter``'s layers merged in (``outtype``) to ``path``;
    returns how many tensors were replaced."""
    check_outtype(outtype)
    gguf = _gguf()
    arch, permuted = _check_exportable(adapter)
    names = gguf.get_tensor_name_map(arch, adapter.model.config.num_hidden_layers)
    replaced = {}
    for layer in bar(adapter.layers, desc="merge", unit="layer"):
        weight = gguf_rows(adapted_weight(adapter, layer), layer, adapter.model.config, permuted)
        target = tensor_name(names, layer)
        replaced[target] = encoded(weight.cpu().numpy(), outtype, target)
    reader = gguf.GGUFReader(str(base))
    missing = sorted(set(replaced) - {tensor.name for tensor in reader.tensors})
    if missing:
        raise LorakitError(f"{base} has no tensor {missing[0]}: the adapter was trained on another base; pass its "
                           "GGUF with --model")
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _copy_metadata(reader, writer)
    for tensor in reader.tensors:
        data, kind = replaced.get(tensor.name, (tensor.data, tensor.tensor_type))
        writer.add_tensor(tensor.name, data, raw_dtype=kind)
    _finish(writer)
    return len(replaced)


def _copy_metadata(reader: Any, writer: Any) -> None:
    """Every key of the base GGUF (tokenizer, chat template, hyperparameters), but those the
    writer sets itself (the architecture and the file's own header fields)."""
    gguf = _gguf()
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)


def modelfile(base: str, adapter_file: str | None = None) -> str:
    """An Ollama ``Modelfile``: ``FROM`` the base (a GGUF path), with ``ADAPTER`` the adapter file."""
    lines = [f"FROM {base}"] + ([f"ADAPTER {adapter_file}"] if adapter_file else [])
    return "\n".join(lines) + "\n"


# -- the commands' folders -----------------------------------------------------------------------
RECORD_FILE = "gguf_export.json"


def needed_base(base_model: str | None) -> tuple[str, Path | None]:
    """Which base an adapter GGUF needs, in words, and its GGUF file where lorakit knows it."""
    try:
        path = base_gguf(base_model)
    except LorakitError:
        return (f"a GGUF of {base_model} converted with llama.cpp's convert_hf_to_gguf.py (the same weights in "
                "f16/bf16/f32; a quantized conversion adds its rounding)"), None
    return f"{path} (the GGUF this adapter was trained on, dequantized)", path


def export_gguf(adapter: AdapterView, out: str | Path, base_model: str | None, outtype: str = "f16",
                rank: int | None = None, **owner: Any) -> dict[str, Any]:
    """``OUT/adapter.gguf`` (+ an Ollama ``Modelfile`` where the base GGUF is known, and
    ``gguf_export.json``), written atomically; returns the record."""
    words, base = needed_base(base_model)
    with replace_folder(out, "export", **owner) as tmp:
        record = {"format": "gguf adapter", "outtype": outtype, "base": words,
                  **write_adapter_gguf(adapter, tmp / ADAPTER_FILE, outtype, rank)}
        if base is not None:
            (tmp / MODELFILE).write_text(modelfile(str(base), f"./{ADAPTER_FILE}"))
        (tmp / RECORD_FILE).write_text(json_text(record, indent=2) + "\n")
    return record


def merge_gguf(adapter: AdapterView, out: str | Path, base_model: str | None, outtype: str = "f16",
               **owner: Any) -> dict[str, Any]:
    """``OUT/model.gguf`` (the base GGUF with the adapter merged in) and its ``Modelfile``, atomically."""
    base = base_gguf(base_model)
    check_outtype(outtype)
    _check_exportable(adapter)  # before the folder is claimed and the weights are computed
    with replace_folder(out, "merge", **owner) as tmp:
        replaced = write_merged_gguf(adapter, base, tmp / MERGED_FILE, outtype)
        record = {"format": "gguf merged", "outtype": outtype, "base": str(base), "replaced_tensors": replaced}
        (tmp / MODELFILE).write_text(modelfile(f"./{MERGED_FILE}"))
        (tmp / RECORD_FILE).write_text(json_text(record, indent=2) + "\n")
    return record
