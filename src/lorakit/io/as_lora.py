"""Any adapter as a plain LoRA (``lorakit export --as-lora``): one pair ``(B', A')`` per layer whose
product is the layer's whole change against the original base, for readers that know plain LoRA
alone (vLLM, SGLang, llama.cpp).

For layer ``ℓ`` the change is ``ΔW_ℓ = W'_ℓ − W_ℓ⁰``: the adapted layer's dense weight (``Form.
merged_weight`` of the base weight now, plus any frozen path) minus the original weight (the base
weight now minus ``Adapter.base_changes``: a spectral init's ``−s·B₀A₀``, Delta-LoRA's moves).

- Forms that add a low-rank term (LoRA, VeRA, AdaLoRA's triplets, schedules' gated pairs,
  LoRA-drop's shared pairs, spectral inits, Delta-LoRA): ``ΔW = Σ c·B A`` exactly
  (``Adapter.delta_terms``), compacted to its numerical rank (``peft_format.lora_pair``); with a
  ``rank`` below that, the best rank-``rank`` approximation (truncated SVD of the product).
- DoRA rescales rows, ``W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_row``, so ``ΔW`` has full rank in
  general: its truncated SVD at ``rank`` (default the adapter's own rank),
  ``B' = U_r Σ_r^{1/2}``, ``A' = Σ_r^{1/2} V_rᵀ`` (Eckart–Young: the best approximation of that rank
  in the Frobenius norm).

``onto``: ``original`` (the default) writes the change against the original weights, for any base
that holds them. ``quantized`` writes the change against the quantized base the adapter trained on,
``ΔW = W' − q(W)``, for an adapter trained on a QLoRA base and served on the same quantization of the
checkpoint (bitsandbytes NF4/int8 in PEFT or vLLM): exact there, where the ``original`` export of an
init that moves ``W`` would miss its starting correction. It needs every layer's base to be ``q(W)``
itself (``Adapter.quantized_base_terms``): LoftQ with one iteration (the pair is then ``(B, A)`` at
rank ``r``, not ``2r``), a spectral init with ``spectral_residual: correction``, or an init that
leaves ``W``; a base requantized around a residual is refused with one line.

Each layer's relative error ``‖ΔW − B'A'‖_F / ‖ΔW‖_F`` is reported (0 to float rounding for the
exact cases), and so is the largest logit difference between the adapter and the original base
plus the plain pairs on a few fixed token sequences (``logit_difference``).

``vllm``: vLLM serves LoRA ranks up to 512 with ``--max-lora-rank`` one of ``VLLM_RANKS``, plain
pairs only (no DoRA magnitude, no ``modules_to_save``): a rank above 512 is truncated, a rank
between the allowed values is padded with zero columns (exact), and trained whole modules are
refused (merge the adapter instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.component import MAGNITUDE
from ..core.protocol import AdapterView
from ..core.terms import add_products
from ..errors import LorakitError
from ..ops.resize import shrink
from ..quantized import base_weight
from ..status import bar
from .json_text import json_text
from .ownership import replace_folder
from .peft_format import lora_pair, write_peft

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values
ONTO = ("original", "quantized")  # what the exported change is against
CHECK_SEQUENCES, CHECK_LENGTH = 4, 32  # the fixed token sequences the logits are compared on


@dataclass
class PlainLora:
    """The plain pairs of every layer, their shared rank and what the conversion cost."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    errors: dict[str, float]  # per layer: ‖ΔW − B'A'‖_F / ‖ΔW‖_F
    rank: int  # the written rank (every layer padded to it)
    changes: list[str] = field(default_factory=list)  # what the target made the conversion do, in words

    def record(self) -> dict[str, Any]:
        """What ``as_lora.json`` holds."""
        return {"rank": self.rank, "max_relative_error": max(self.errors.values()), "changes": self.changes,
                "layers": {name: {"rank": int(B.shape[1]), "relative_error": self.errors[name]}
                           for name, (B, _) in self.pairs.items()}}


@torch.no_grad()
def adapted_weight(adapter: AdapterView, name: str) -> torch.Tensor:
    """Layer ``name``'s dense adapted weight ``W'`` (float32), whatever its method."""
    layer = adapter.layers[name]
    adapted = layer.form.merged_weight(base_weight(layer.base_layer).to(torch.float32))
    add_products(adapted, layer.paths)
    return adapted


@torch.no_grad()
def total_change(adapter: AdapterView, name: str, onto: str = "original") -> torch.Tensor:
    """Layer ``name``'s dense ``ΔW`` against its original weight, or (``onto="quantized"``) against
    its quantized base as it is now (float32)."""
    reference = base_weight(adapter.layers[name].base_layer).to(torch.float32).clone()
    if onto == "original":
        add_products(reference, [(B, A, -c) for B, A, c in adapter.base_changes(name)])
    return adapted_weight(adapter, name) - reference


def check_onto(adapter: AdapterView, onto: str) -> None:
    """Refuse an unknown ``onto``, and ``quantized`` where a layer's base is not ``q(W)``, before any SVD."""
    if onto not in ONTO:
        raise LorakitError(f"--onto {onto!r}: use one of {', '.join(ONTO)}")
    refused = [name for name in adapter.layers if onto == "quantized" and adapter.quantized_base_terms(name) is None]
    if refused:
        raise LorakitError(f"--onto quantized needs each layer's base to be the checkpoint's quantization, and "
                           f"{refused[0]!r}'s is not (a plain base, or one requantized around a spectral or LoftQ "
                           "residual: LoftQ with loftq_iter > 1, spectral_residual requantize or loftq); export "
                           "without --onto (the change against the original weights)")


def _truncated(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_r Σ_r^{1/2}, Σ_r^{1/2} V_rᵀ)`` of the dense ``delta``."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root.unsqueeze(1) * Vh[:rank]


def plain_pair(adapter: AdapterView, name: str, rank: int | None, onto: str = "original"
               ) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """``(B', A', relative error, truncated)`` of layer ``name`` at most ``rank`` (None: exact, DoRA
    at its own rank), against what ``onto`` names (checked by ``check_onto``); ``truncated``: the
    exact low-rank change needed more than ``rank``."""
    delta = total_change(adapter, name, onto)
    form = adapter.layers[name].form
    truncated = False
    if MAGNITUDE in form.capabilities:
        B, A = _truncated(delta, min(rank or form.rank, *delta.shape))
    else:
        B, A = lora_pair(adapter, name, adapter.quantized_base_terms(name) if onto == "quantized" else None)
        if rank is not None and B.shape[1] > rank:
            B, A, truncated = *shrink(B, A, rank), True
    if B.shape[1] == 0:  # every direction masked (AdaLoRA): a zero pair, since readers need r ≥ 1
        B, A = delta.new_zeros(delta.shape[0], 1), delta.new_zeros(1, delta.shape[1])
    norm = torch.linalg.matrix_norm(delta)
    error = float(torch.linalg.matrix_norm(delta - B @ A) / norm) if norm > 0 else 0.0
    return B, A, error, truncated


def as_lora(adapter: AdapterView, rank: int | None = None, target: str = "peft", onto: str = "original") -> PlainLora:
    """Every layer of ``adapter`` as a plain pair (``rank``: at most that rank) against what ``onto``
    names, fitted to ``target``."""
    if rank is not None and rank < 1:
        raise LorakitError(f"--rank {rank}: give a positive rank")
    if target == "vllm" and adapter.full_modules:
        raise LorakitError(f"vLLM serves no modules_to_save, and this adapter trains {sorted(adapter.full_modules)} "
                           "in full; merge it instead (lorakit merge)")
    largest = VLLM_RANKS[-1] if target == "vllm" else None
    if largest is not None and (rank is None or rank > largest):
        rank = largest
    check_onto(adapter, onto)
    found = {name: plain_pair(adapter, name, rank, onto)
             for name in bar(adapter.layers, desc="ΔW as pairs", unit="layer")}
    widest = max(int(B.shape[1]) for B, *_ in found.values())
    written, changes = widest, []
    if any(truncated for *_, truncated in found.values()):
        changes.append(f"layers whose exact change has a rank above {rank} truncated to it by SVD")
    if target == "vllm":
        written = next(allowed for allowed in VLLM_RANKS if allowed >= widest)
        if written != widest:
            changes.append(f"rank padded from {widest} to {written} with zeros (exact): one of vLLM's "
                           "--max-lora-rank values")
    return PlainLora({name: (B, A) for name, (B, A, _, _) in found.items()},
                     {name: error for name, (_, _, error, _) in found.items()}, written, changes)


@torch.no_grad()
def logit_difference(adapter: AdapterView, plain: PlainLora, onto: str = "original") -> dict[str, float]:
    """The largest absolute logit difference between the adapted model and the base ``onto`` names
    (the original, or the quantized base as it is) plus ``plain``'s pairs, on ``CHECK_SEQUENCES``
    fixed random token sequences, and the largest logit."""
    model: nn.Module = adapter.model
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    tokens = torch.randint(0, vocab, (CHECK_SEQUENCES, CHECK_LENGTH), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        adapted = model(input_ids=tokens).logits.float()
        reference = adapter.original if onto == "original" else adapter.disabled
        with reference(plus={name: [(B, A, 1.0)] for name, (B, A) in plain.pairs.items()}):
            exported = model(input_ids=tokens).logits.float()
    finally:
        model.train(was_training)
    return {"max_abs_logit_difference": float((adapted - exported).abs().max()),
            "max_abs_logit": float(adapted.abs().max())}


AS_LORA_FILE = "as_lora.json"  # the conversion's record, next to the PEFT files


def export_as_lora(adapter: AdapterView, path: str | Path, rank: int | None = None, target: str = "peft",
                   base_model: str | None = None, dtype: torch.dtype = torch.float32, onto: str = "original",
                   **owner: Any) -> dict[str, Any]:
    """Write ``adapter`` as a plain PEFT LoRA into the folder ``path`` (atomically; see ``as_lora``)
    with ``as_lora.json``: the rank, each layer's relative error, the logit difference, what the
    change is against (``onto``) and what ``target`` changed. Returns that record. ``owner``:
    ``replace_folder``'s ``overwrite`` and ``inputs``."""
    plain = as_lora(adapter, rank, target, onto)
    record = {"target": target, "onto": onto, **plain.record(), **logit_difference(adapter, plain, onto)}
    with replace_folder(path, "export", **owner) as tmp:
        write_peft(adapter, tmp, base_model, dtype, plain.pairs, plain.rank)
        (tmp / AS_LORA_FILE).write_text(json_text(record, indent=2) + "\n")
    return record
