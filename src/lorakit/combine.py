"""Combining adapters into one: ``lorakit combine A B ... OUT --weights w_1 w_2 ... --how HOW``.

Every adapter is first its plain pairs: per layer ``(B_i, A_i)`` with ``B_i A_i`` its whole change
against the original base, scale 1 (``io.as_lora``: exact for every method but DoRA, whose change
is truncated at its rank), each padded with zeros to the adapter's largest rank ``R_i``, exactly as
``lorakit export`` writes them. The rules are those of PEFT's ``add_weighted_adapter`` applied to
those pairs (tested against PEFT on the exported files):

- ``cat``: ``A = [w_1 A_1; w_2 A_2; …]``, ``B = [B_1, B_2, …]``, so ``B A = Σ w_i B_i A_i`` exactly,
  at rank ``Σ R_i``.
- ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``: a merge rule applied to
  the ``A_i`` with weights ``sign(w_i)·√|w_i|`` and to the ``B_i`` with ``√|w_i|``, factor by factor
  (every adapter at the same rank). A rough approximation: the cross terms ``B_i A_j`` appear.
- ``svd``, ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``: the rule
  applied to the dense changes ``ΔW_i = B_i A_i`` with weights ``w_i``, then the best rank-``R``
  approximation ``U_R diag(σ_R) · V_Rᵀ`` (``R``: ``rank``, else the largest ``R_i``).

Merge rules on tensors ``T_i`` with weights ``c_i`` (``density``: the fraction of entries kept):

- task arithmetic: ``Σ c_i T_i``;
- magnitude prune: each ``T_i`` keeps its ``⌊density·n⌋`` largest entries by magnitude, then ``Σ c_i T_i``;
- TIES (Yadav et al. 2023): magnitude prune, elect each entry's sign from the pruned ``Σ T_i``,
  then average ``c_i T_i`` over the adapters that agree with it;
- DARE (Yu et al. 2024): each entry kept with probability ``density`` and rescaled by
  ``1/density`` (``torch.bernoulli`` on the global generator, seeded by ``seed``), then
  task arithmetic (``dare_linear``) or TIES' election and average (``dare_ties``).

The result is a plain ``lora`` adapter (scale 1, each layer its own rank) that trains further,
saves, exports and merges like any other.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .adapter import Adapter
from .api import attach, load
from .errors import LorakitError
from .io.adapter_files import read_adapter_config
from .io.as_lora import as_lora
from .presets import resolve

Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]
FACTOR_RULES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
DENSE_RULES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
HOW = ("cat", *FACTOR_RULES, *DENSE_RULES)
PRUNED = ("ties", "dare_linear", "dare_ties", "magnitude_prune")


# -- merge rules -------------------------------------------------------------------------------
def _top_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    keep = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    keep[t.abs().reshape(-1).topk(int(density * t.numel())).indices] = 1
    return t * keep.view_as(t)


def _random_keep(t: torch.Tensor, density: float) -> torch.Tensor:
    return t * torch.bernoulli(torch.full_like(t, density)) / density


def _sparsified(tensors: Sequence[torch.Tensor], density: float, prune: Callable) -> torch.Tensor:
    return torch.stack([t if density >= 1 else prune(t, density) for t in tensors])


def _weighted(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stack * weights.view(-1, *[1] * (stack.dim() - 1))


def _elected_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES: each entry's sign from ``Σ T_i`` (ties count as +), the mean of the agreeing ``c_i T_i``."""
    sign = torch.where(stack.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    agree = stack.sign() == sign
    return (_weighted(stack, weights) * agree).sum(0) / agree.sum(0).clamp(min=1)


def merge_rule(rule: str, tensors: Sequence[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """Rule ``rule`` (without ``_svd``) over ``tensors`` with ``weights`` (see the module docstring)."""
    if rule in ("linear", "svd"):
        return _weighted(torch.stack(list(tensors)), weights).sum(0)
    if rule == "magnitude_prune":
        return _weighted(_sparsified(tensors, density, _top_magnitude), weights).sum(0)
    if rule == "dare_linear":
        return _weighted(_sparsified(tensors, density, _random_keep), weights).sum(0)
    prune = _top_magnitude if rule == "ties" else _random_keep
    return _elected_mean(_sparsified(tensors, density, prune), weights)


# -- per layer ---------------------------------------------------------------------------------
def combine_layer(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float], how: str,
                  density: float, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's combined ``(B, A)`` from the adapters' ``pairs``."""
    if how == "cat":
        return (torch.cat([B for B, _ in pairs], dim=1),
                torch.cat([w * A for (_, A), w in zip(pairs, weights)], dim=0))
    if how in FACTOR_RULES:
        root = torch.tensor([math.sqrt(abs(w)) for w in weights])
        signed = torch.tensor([math.copysign(math.sqrt(abs(w)), w) for w in weights])
        return (merge_rule(how, [B for B, _ in pairs], root, density),
                merge_rule(how, [A for _, A in pairs], signed, density))
    delta = merge_rule(how.removesuffix("_svd"), [B @ A for B, A in pairs], torch.tensor(list(weights)), density)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return U[:, :rank] * S[:rank], Vh[:rank]


def check_request(weights: Sequence[float], count: int, how: str, density: float | None, rank: int | None) -> None:
    """The options: one weight per adapter, a known rule, a density where the rule prunes."""
    if count < 2:
        raise LorakitError("combine needs at least two adapters")
    if len(weights) != count:
        raise LorakitError(f"{count} adapters but {len(weights)} weights; give one --weights value per adapter")
    if how not in HOW:
        raise LorakitError(f"--how {how!r} is not one of {', '.join(HOW)}")
    if how.removesuffix("_svd") in PRUNED and (density is None or not 0 < density <= 1):
        raise LorakitError(f"--how {how} needs --density in (0, 1]: the fraction of entries each adapter keeps")
    if rank is not None and (rank < 1 or how not in DENSE_RULES):
        raise LorakitError(f"--rank {rank}: give a positive rank, with an svd rule (cat and the factor rules keep "
                           "the adapters' ranks)")


def _padded(pairs: Pairs, rank: int) -> Pairs:
    return {name: (torch.nn.functional.pad(B, (0, rank - B.shape[1])),
                   torch.nn.functional.pad(A, (0, 0, 0, rank - A.shape[0]))) for name, (B, A) in pairs.items()}


def _check_same_layers(found: list[Pairs], paths: Sequence[str | Path]) -> None:
    for pairs, path in zip(found[1:], paths[1:]):
        if set(pairs) != set(found[0]):
            odd = sorted(set(pairs) ^ set(found[0]))[0]
            raise LorakitError(f"{path} and {paths[0]} adapt other layers ({odd} is in one only); combine adapters "
                               "with the same targets")


# -- adapters ----------------------------------------------------------------------------------
def plain_pairs(base: nn.Module, path: str | Path) -> tuple[Pairs, int]:
    """The adapter at ``path`` as plain pairs padded to its rank (on a copy of ``base``), and that rank."""
    if read_adapter_config(path).get("train_modules"):
        raise LorakitError(f"{path} trains whole modules (train_modules), which combine cannot add up; combine "
                           "adapters without them")
    adapter = load(copy.deepcopy(base), path)
    plain = as_lora(adapter)
    return _padded(plain.pairs, plain.rank), plain.rank


def check_bases(paths: Sequence[str | Path]) -> str | None:
    """The one base every adapter records (refusing adapters of different bases)."""
    bases = [read_adapter_config(path).get("base_model") for path in paths]
    for path, base in zip(paths[1:], bases[1:]):
        if base != bases[0]:
            raise LorakitError(f"{path} was trained on {base}, {paths[0]} on {bases[0]}; combine adapters of one base")
    return bases[0]


def combine(base: nn.Module, paths: Sequence[str | Path], weights: Sequence[float], how: str = "cat",
            density: float | None = None, rank: int | None = None, seed: int = 0) -> Adapter:
    """The adapters saved at ``paths`` (all of ``base``) combined into one plain ``lora`` adapter on ``base``."""
    check_request(weights, len(paths), how, density, rank)
    check_bases(paths)
    loaded = [plain_pairs(base, path) for path in paths]
    found = [pairs for pairs, _ in loaded]
    _check_same_layers(found, paths)
    if how in FACTOR_RULES and len({r for _, r in loaded}) > 1:
        raise LorakitError(f"--how {how} adds the factors, which needs one rank, and these adapters have ranks "
                           f"{sorted({r for _, r in loaded})}; use --how cat or svd")
    torch.manual_seed(seed)  # DARE's draws
    order = [name for name, _ in base.named_modules() if name in found[0]]
    combined = {name: combine_layer([pairs[name] for pairs in found], weights, how, density or 1.0,
                                    rank or max(r for _, r in loaded)) for name in order}
    return attach_pairs(base, combined)


def attach_pairs(model: nn.Module, pairs: Pairs) -> Adapter:
    """A plain ``lora`` adapter on ``model`` whose layers compute ``W x + B (A x)`` with ``pairs``."""
    width = max(B.shape[1] for B, _ in pairs.values())
    adapter = attach(model, resolve("lora", rank=width, alpha=float(width), targets=sorted(pairs)))
    for name, (B, A) in pairs.items():
        form = adapter.layers[name].form
        form.set_rank(B.shape[1])
        form.scale = 1.0
        form.set_factors(B.to(form.B.device, form.B.dtype), A.to(form.A.device, form.A.dtype))
    return adapter
