"""Export an adapter in PEFT's LoRA format (``adapter_config.json`` + ``adapter_model.safetensors``),
read by PEFT's ``PeftModel.from_pretrained`` and by vLLM's LoRA loader on top of the *original*
base model (the one before any init rewrote it).

Each layer's whole change against the original base weight is written as one LoRA pair
``ΔW_total = B' A'``, assembled from terms ``c · B A``:

- the form's own ``ΔW`` (``Form.factors``: LoRA's scale, a schedule's gate, AdaLoRA's kept
  singular values, VeRA's vectors and shared projections, all folded into ``B'``);
- a spectral init (OLoRA, PiSSA) took ``s·B₀A₀`` out of ``W``: the term ``−s·B₀A₀``;
- a recipe that moved ``W`` during training (Delta-LoRA): ``OptimizerRecipe.base_update_terms``.

``Adapter.delta_terms`` lists these terms.

With more than one term the concatenation ``[c₁B₁, c₂B₂, …] [A₁; A₂; …]`` is compacted to its
numerical rank (``ops.resize.compact``: thin QRs and the SVD of the small core), so an OLoRA
adapter exports at rank ``2r`` and Delta-LoRA's ``B A`` appearing twice costs no extra rank.

So that every reader applies the same scale, all layers are written at one rank ``R`` (the
largest, smaller layers padded with zero columns of ``B'`` and rows of ``A'``, which changes
nothing) with ``r = lora_alpha = R``: the scale is 1 and lives in ``B'``. No ``rank_pattern``
or ``alpha_pattern`` is needed, which vLLM would not honour. DoRA also writes its magnitude
(``use_dora``; PEFT reads it, vLLM refuses DoRA adapters: merge those instead). Layers a
schedule removed are not written; LoRA-drop's shared adapter is written for every layer using it.

Modules trained in full (``train_modules``: a classifier head, ``lm_head``) are written whole as
PEFT's ``modules_to_save`` (``base_model.model.<name>.<param>``); a sequence classifier is
exported with ``task_type: SEQ_CLS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..conv1d import Conv1D, Conv1DView
from ..core.component import MAGNITUDE
from ..core.protocol import AdapterView
from ..core.terms import Term
from ..errors import LorakitError
from ..heads import is_sequence_classifier
from ..layer import AdaptedLinear
from ..models import hub_id
from ..ops.resize import compact
from .atomic import atomic_directory
from .json_text import json_text

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
OWNED_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what an export may replace in an existing folder
PREFIX = "base_model.model."
Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name → (B', A')



@torch.no_grad()
def lora_pair(adapter: AdapterView, name: str, terms: list[Term] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One float32 CPU pair ``(B', A')`` with ``B' A' = Σ c·B A`` over ``terms`` (default: the layer's
    ``delta_terms``, its change against the original weight)."""
    terms = [(c * B.detach().float().cpu(), A.detach().float().cpu())
             for B, A, c in (adapter.delta_terms(name) if terms is None else terms)]
    if len(terms) == 1:
        return terms[0]
    return compact(torch.cat([B for B, _ in terms], dim=1), torch.cat([A for _, A in terms], dim=0))


def target_modules(adapter: AdapterView, names: list[str]) -> list[str]:
    """The module-name suffixes (``q_proj``, ...) when they select exactly ``names`` in the model,
    else the full names (some matching layers were removed by a schedule or not targeted)."""
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in names})
    matching = {name for name, module in adapter.model.named_modules()
                if isinstance(module, (nn.Linear, Conv1D, AdaptedLinear)) and name.rsplit(".", 1)[-1] in suffixes}
    return suffixes if matching == set(names) else sorted(names)


def peft_config(adapter: AdapterView, rank: int, names: list[str], base_model: str | None, dora: bool
                ) -> dict[str, Any]:
    """PEFT ``LoraConfig`` fields for the exported pairs (rank ``rank``, scale 1; ``dora``: with magnitudes)."""
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if is_sequence_classifier(adapter.model) else "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "use_dora": dora,
        "target_modules": target_modules(adapter, names),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": any(isinstance(layer.base_layer, Conv1DView) for layer in adapter.layers.values()),
        "init_lora_weights": True,
        "modules_to_save": sorted(adapter.full_modules) or None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }


def peft_tensors(adapter: AdapterView, dtype: torch.dtype = torch.float32, pairs: Pairs | None = None,
                 rank: int | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """PEFT-keyed tensors of every adapted layer, all at rank ``R`` (``rank``, else the largest);
    returns ``(tensors, R)``. ``pairs``: plain pairs to write instead of the adapter's own (``as_lora``;
    then no DoRA magnitude is written)."""
    plain = pairs is not None
    pairs = pairs if plain else {name: lora_pair(adapter, name) for name in adapter.layers}
    rank = rank or max(1, *(B.shape[1] for B, _ in pairs.values()))  # PEFT needs r ≥ 1
    tensors = {}
    for name, (B, A) in pairs.items():
        pad = rank - B.shape[1]
        tensors[f"{PREFIX}{name}.lora_A.weight"] = F.pad(A, (0, 0, 0, pad)).to(dtype).contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = F.pad(B, (0, pad)).to(dtype).contiguous()
        form = adapter.layers[name].form
        if MAGNITUDE in form.capabilities and not plain:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = form.magnitude.detach().cpu().to(dtype).contiguous()
    for name, module in adapter.full_modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{PREFIX}{name}.{key}"] = value.detach().cpu().to(dtype).contiguous()
    return tensors, rank


def _refuse_tied(adapter: AdapterView) -> None:
    """Refuse a whole module whose weights are tied to a module outside it (SmolLM2's ``lm_head``
    is its ``embed_tokens``): PEFT's ``modules_to_save`` copies would untie and change only one."""
    for name, module in adapter.full_modules.items():
        own = {id(p) for p in module.parameters()}
        tied = [other for other, p in adapter.model.named_parameters(remove_duplicate=False)
                if id(p) in own and not (other == name or other.startswith(name + "."))]
        if tied:
            raise LorakitError(f"train_modules {name!r} shares its weights with {tied[0]} (tied embeddings), which "
                               "PEFT's modules_to_save would not change with it; merge the adapter instead "
                               "(lorakit merge)")


def export_peft(adapter: AdapterView, path: str | Path, base_model: str | None = None,
                dtype: torch.dtype = torch.float32) -> Path:
    """Write ``adapter`` to the folder ``path`` (atomically) in PEFT's LoRA format; ``base_model``
    is recorded as ``base_model_name_or_path`` (default: the model's own ``_name_or_path``; for the
    embedded model, the hub id its GGUF was made from)."""
    with atomic_directory(path, OWNED_FILES) as tmp:
        write_peft(adapter, tmp, base_model, dtype)
    return Path(path)


def write_peft(adapter: AdapterView, folder: Path, base_model: str | None = None,
               dtype: torch.dtype = torch.float32, pairs: Pairs | None = None, rank: int | None = None) -> None:
    """Write the PEFT files of ``adapter`` into the existing ``folder`` (not atomic; see ``export_peft``);
    ``pairs`` and ``rank``: plain pairs instead of the adapter's own (``peft_tensors``)."""
    if not adapter.layers:
        raise ValueError("the adapter has no adapted layers left to export")
    _refuse_tied(adapter)
    tensors, rank = peft_tensors(adapter, dtype, pairs, rank)
    if base_model is None:
        base_model = getattr(getattr(adapter.model, "config", None), "_name_or_path", None) or None
        base_model = hub_id(base_model)
    dora = pairs is None and any(MAGNITUDE in form.capabilities for form in adapter.forms())
    config = peft_config(adapter, rank, list(adapter.layers), base_model, dora)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json_text(config, indent=2) + "\n")
