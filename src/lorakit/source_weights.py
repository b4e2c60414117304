"""The full-precision weights a quantized base was loaded from, read again from its checkpoint.

A base loaded with ``quantize: nf4 | int8`` keeps only the 4/8-bit codes; LoftQ (and the
``spectral_residual: loftq`` of OLoRA, PiSSA and MiLoRA) fit the adapter to the weights *before*
quantization. lorakit reads them, layer by layer, from the safetensors files the model came from:
the embedded model's converted copy in the cache, a model folder, or the Hugging Face cache of a
hub id (never a download: the files are there, the model was just loaded from them). A GGUF file
holds already quantized weights, so it is refused with one line.

A target module's key is its name plus ``.weight``; a model whose checkpoint was saved from its
bare base model (a classifier loaded from an encoder checkpoint) has its keys without the
``base_model_prefix``, and the reader tries both. A GPT-2 ``Conv1D`` weight, stored ``(in, out)``,
comes back ``(out, in)`` like every other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .conv1d import Conv1D
from .errors import LorakitError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def checkpoint_folder(model: nn.Module) -> Path:
    """The folder of safetensors files ``model`` was loaded from (its ``config._name_or_path``)."""
    from .models import EMBEDDED, EMBEDDED_ENCODER, embedded_encoder_path, embedded_model_path, model_path

    name = model_path(str(getattr(model.config, "_name_or_path", "") or ""))
    if name == EMBEDDED:
        return embedded_model_path()
    if name == EMBEDDED_ENCODER:
        return embedded_encoder_path()
    if not name:
        raise LorakitError("the model does not say where it was loaded from (config._name_or_path); LoftQ reads "
                           "the full-precision weights from there: load it with load_model or from_pretrained")
    local = Path(name).expanduser()
    if local.suffix.lower() == ".gguf":
        raise LorakitError(f"{name} is a GGUF file, whose weights are already quantized; LoftQ needs the "
                           "full-precision checkpoint: load the model from a safetensors folder or a hub id")
    if local.is_dir():
        return local
    return _hub_snapshot(name)


def _hub_snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=["*.safetensors", "*.json"]))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise LorakitError(f"the checkpoint of {repo!r} is not in the Hugging Face cache; LoftQ reads its "
                           "full-precision weights from there: load the model from a local folder") from None


def full_precision_weights(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Each of ``layers``' (name → module of ``model``) weight as stored in the checkpoint, float32 ``(out, in)``."""
    from safetensors import safe_open

    folder = checkpoint_folder(model)
    files = _key_files(folder)
    prefix = getattr(model, "base_model_prefix", "") or ""
    weights = {}
    for name, module in layers.items():
        keys = [f"{name}.weight", f"{name.removeprefix(prefix + '.')}.weight", f"{prefix}.{name}.weight"]
        key = next((key for key in keys if key in files), None)
        if key is None:
            raise LorakitError(f"{folder} holds no weight for layer {name!r} (looked for {keys[0]}); load the model "
                               "from the checkpoint it was saved as")
        with safe_open(str(folder / files[key]), framework="pt") as handle:
            weight = handle.get_tensor(key).to(torch.float32)
        if getattr(module, "source_cls", None) is Conv1D or isinstance(module, Conv1D):
            weight = weight.T
        weights[name] = weight.contiguous()
    return weights


def _key_files(folder: Path) -> dict[str, str]:
    """Tensor key → the safetensors file in ``folder`` that holds it."""
    from safetensors import safe_open

    if (folder / INDEX).is_file():
        return json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
    if (folder / SINGLE).is_file():
        with safe_open(str(folder / SINGLE), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), SINGLE)
    raise LorakitError(f"{folder} has no {SINGLE} or {INDEX}; LoftQ reads the full-precision weights from "
                       "safetensors files")
