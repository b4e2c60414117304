"""AdaLoRA's rank schedule (Zhang et al. 2023, arXiv 2303.10512, §3.2–3.3).

Works on the triplets ``(P_{:,k}, λ_k, Q_{k,:})`` of the ``svd`` form. Before every optimizer
step (gradients present, before the update and before ``zero_grad``), a step pre-hook

- adds the gradient of the orthogonal regularisation ``γ·Σ(‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F)``
  (Eq. 4–5, ``γ = adalora_orth_reg``): ``∇P += 4γ·P(PᵀP − I)``, ``∇Q += 4γ·(QQᵀ − I)Q``. No loss
  change is needed and a hand-written loop needs no extra call; the logged training loss
  excludes the penalty, and gradient clipping done before ``optimizer.step()`` does not see it;
- updates the sensitivity of every entry ``w`` of ``P``, ``λ``, ``Q``: ``I = |w · ∂L/∂w|`` (Eq. 6,
  ``L`` the loss with the penalty, as in the paper), smoothed ``Ī ← β₁Ī + (1−β₁)I`` and
  ``Ū ← β₂Ū + (1−β₂)|I − Ī|`` (Eq. 8–9, β₁ = β₂ = 0.85, ``Ī`` the new one), score ``Ī·Ū``; the
  triplet score is ``S_k = score(λ_k) + mean_i score(P_{i,k}) + mean_j score(Q_{k,j})`` (Eq. 10).

After step ``t`` (counted from 1) a post-hook applies the budget (Eq. 11): ``b₀ = r·n`` (``n``
adapted layers) while ``t ≤ t_init``, then ``b(t) = b_T + ⌊(b₀ − b_T)(1 − (t − t_init)/(T −
t_init − t_final))³⌋`` until ``T − t_final``, then ``b_T = target_rank·n``. Every ``ΔT`` steps of
the cubic phase, and at ``t = T − t_final``, the ``b(t)`` triplets with the highest ``S_k`` over
all layers keep their mask bit and the others are masked (their ``λ`` zeroed). After
``T − t_final`` the mask stays as it is (the paper's final fine-tuning of the allocation), so
exactly ``b_T`` triplets remain; every step keeps masked ``λ`` at 0.

Defaults: ``adalora_target_rank = ⌈r/2⌉``, ``adalora_t_init = ⌊T/10⌋``, ``adalora_t_final =
⌊T/5⌋``, ``adalora_delta_t = 1``, ``adalora_orth_reg = 0.1``. The warm-up matters: ``λ = 0`` at
init, so before the first steps every task sensitivity ``|λ·∂L/∂λ|`` is 0 and a budget cut right
away would rank triplets by the orthogonal penalty alone (PEFT's defaults are 0 and 0).
``T = adalora_total_steps`` must be known
when the optimizer is built; ``lorakit train`` fills it in with the run's step count.

State: the step counter is ``adapter.method_state["adalora.step"]`` and the masks are the forms'
buffers, both saved with the adapter, so a resumed run continues the budget schedule where it
stopped. The EMAs ``Ī``, ``Ū`` are kept by the adapter's schedule instance; training checkpoints
hold them too (``checkpoint_state``), so a resumed run equals the uninterrupted one, while a
saved adapter leaves them out (they only matter during training).

Deviations: the paper's regulariser is the squared Frobenius norm, used here (PEFT uses the
plain norm averaged over matrices); importance is computed before the update, on the weights the
gradient belongs to (PEFT computes it after ``optimizer.step()``); see ``forms/svd.py`` for the
mask in the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import MASKED, Parts
from ..core.options import Derive, Option
from ..core.protocol import AdapterView
from ..core.spec import MethodSpec
from ..core.steps import current_step, next_step, start_counter
from ..errors import LorakitError
from .base import SCHEDULES, Schedule

STEP_KEY = "adalora.step"
BETA1 = BETA2 = 0.85


def _phase(share: int) -> Derive:
    """A derived default: ``⌊T/share⌋`` once ``T = adalora_total_steps`` is known."""
    def derive(values: Mapping[str, Any], run: Mapping[str, int]) -> int | None:
        total = values.get("adalora_total_steps")
        return None if total is None else total // share
    return derive


TARGET_RANK = Option("adalora_target_rank", int, None, "b_T / n: the average rank left at the end", minimum=1,
                     derive=lambda values, run: math.ceil(values["rank"] / 2), default_text="⌈rank/2⌉")
TOTAL_STEPS = Option("adalora_total_steps", int, None, "T: optimizer steps of the run (lorakit train fills it in)",
                     minimum=1, derive=lambda values, run: run.get("total_steps"),
                     default_text="the run's steps")
T_INIT = Option("adalora_t_init", int, None, "steps at the full budget before pruning starts", minimum=0,
                derive=_phase(10), default_text="⌊T/10⌋")
T_FINAL = Option("adalora_t_final", int, None, "final steps with the allocation fixed", minimum=0,
                 derive=_phase(5), default_text="⌊T/5⌋")
DELTA_T = Option("adalora_delta_t", int, 1, "ΔT: steps between reallocations", minimum=1)
ORTH_REG = Option("adalora_orth_reg", float, 0.1, "γ: weight of the orthogonal regulariser", minimum=0.0)


def budget(step: int, initial: int, target: int, t_init: int, t_final: int, total: int) -> int:
    """``b(t)``: ``initial`` until ``t_init``, cubic decrease to ``target`` at ``total − t_final``, then
    ``target`` (non-increasing in ``step``)."""
    end = total - t_final
    if step <= t_init:
        return initial
    if step >= end:
        return target
    remaining = 1.0 - (step - t_init) / (end - t_init)
    return target + int((initial - target) * remaining**3)


def orthogonal_penalty(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``R(P, Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F`` (differentiable)."""
    eye = torch.eye(P.shape[1], device=P.device, dtype=P.dtype)
    return (P.T @ P - eye).square().sum() + (Q @ Q.T - eye).square().sum()


@torch.no_grad()
def orthogonal_gradient(P: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂R/∂P, ∂R/∂Q) = (4·P(PᵀP − I), 4·(QQᵀ − I)Q)`` in float32; stacked ``P``, ``Q`` (leading
    batch dimension) give the gradients of each pair."""
    P, Q = P.to(torch.float32), Q.to(torch.float32)
    eye = torch.eye(P.shape[-1], device=P.device)
    return 4.0 * P @ (P.mT @ P - eye), 4.0 * (Q @ Q.mT - eye) @ Q


@torch.no_grad()
def add_orthogonal_gradients(forms: list[Any], gamma: float) -> None:
    """``∇P += γ·∂R/∂P``, ``∇Q += γ·∂R/∂Q`` for every form (a missing gradient starts at zero;
    frozen factors are skipped). Layers whose ``P`` and ``Q`` have the same shapes are stacked
    and handled by one batched product."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for form in forms:
        groups.setdefault((tuple(form.P.shape), tuple(form.Q.shape), form.P.device), []).append(form)
    for members in groups.values():
        grads = orthogonal_gradient(torch.stack([f.P.detach() for f in members]),
                                    torch.stack([f.Q.detach() for f in members]))
        for factor, grad in zip(("P", "Q"), grads):
            params = [getattr(f, factor) for f in members]
            for param in params:
                if param.requires_grad and param.grad is None:
                    param.grad = torch.zeros_like(param)
            trained = [(p.grad, g.to(p.dtype)) for p, g in zip(params, grad) if p.requires_grad]
            if trained:
                torch._foreach_add_(*map(list, zip(*trained)), alpha=gamma)


class Importance:
    """The EMAs ``Ī`` (smoothed sensitivity) and ``Ū`` (uncertainty) of every entry of each layer's
    ``P``, ``λ``, ``Q`` (float32, zero at first)."""

    def __init__(self, beta1: float = BETA1, beta2: float = BETA2) -> None:
        self.beta1, self.beta2 = beta1, beta2
        self.smoothed: dict[tuple[str, str], torch.Tensor] = {}
        self.uncertainty: dict[tuple[str, str], torch.Tensor] = {}

    @staticmethod
    def factors(form: Any) -> dict[str, torch.nn.Parameter]:
        """``{"P": P, "lam": λ, "Q": Q}`` of an SVD form."""
        return {"P": form.P, "lam": form.lam, "Q": form.Q}

    @torch.no_grad()
    def update_all(self, forms: dict[str, Any]) -> None:
        """One EMA step for every layer's entries from the current gradients (``I = 0`` where a
        factor has none), with fused multi-tensor operations."""
        keys, weights, grads = [], [], []
        for name, form in forms.items():
            for factor, param in self.factors(form).items():
                weight = param.detach().to(torch.float32)
                keys.append((name, factor))
                weights.append(weight)
                grads.append(param.grad.to(torch.float32) if param.grad is not None else torch.zeros_like(weight))
                if keys[-1] not in self.smoothed:
                    self.smoothed[keys[-1]] = torch.zeros_like(weight)
                    self.uncertainty[keys[-1]] = torch.zeros_like(weight)
        if not keys:
            return
        smoothed = [self.smoothed[key] for key in keys]
        uncertainty = [self.uncertainty[key] for key in keys]
        sensitivity = torch._foreach_mul(weights, grads)
        torch._foreach_abs_(sensitivity)
        torch._foreach_mul_(smoothed, self.beta1)
        torch._foreach_add_(smoothed, sensitivity, alpha=1 - self.beta1)
        torch._foreach_sub_(sensitivity, smoothed)
        torch._foreach_abs_(sensitivity)
        torch._foreach_mul_(uncertainty, self.beta2)
        torch._foreach_add_(uncertainty, sensitivity, alpha=1 - self.beta2)

    def score(self, name: str, factor: str) -> torch.Tensor | None:
        """``Ī·Ū`` per entry of ``factor`` (``"P"``, ``"lam"`` or ``"Q"``) of layer ``name``; ``None``
        before the first update."""
        key = (name, factor)
        return self.smoothed[key] * self.uncertainty[key] if key in self.smoothed else None

    def triplet_scores(self, name: str, form: Any) -> torch.Tensor:
        """``S_k = score(λ_k) + mean_i score(P_{i,k}) + mean_j score(Q_{k,j})`` (zeros before the
        first update)."""
        if (name, "lam") not in self.smoothed:
            return torch.zeros(form.rank, device=form.lam.device)
        return self.score(name, "lam") + self.score(name, "P").mean(dim=0) + self.score(name, "Q").mean(dim=1)


@torch.no_grad()
def allocate(forms: dict[str, Any], scores: dict[str, torch.Tensor], kept: int) -> None:
    """Keep the ``kept`` triplets with the highest scores over all layers (ties: the earlier
    layer and index), mask the others and zero their ``λ``."""
    names = list(forms)
    device = scores[names[0]].device
    flat = torch.cat([scores[name].to(device) for name in names])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:kept]] = True
    for name, part in zip(names, keep.split([forms[name].rank for name in names])):
        forms[name].mask.copy_(part)
        forms[name].lam.masked_fill_(~forms[name].mask, 0.0)


@SCHEDULES.register("adalora")
class AdaLora(Schedule):
    """Importance-scored triplets under a cubic total-rank budget (see the module docstring)."""

    acts_at_steps: ClassVar[bool] = True

    options = (TARGET_RANK, TOTAL_STEPS, T_INIT, T_FINAL, DELTA_T, ORTH_REG)
    requires: ClassVar[frozenset[str]] = frozenset({MASKED})
    needs: ClassVar[str] = "masks the triplets of AdaLoRA's SVD form"
    summary: ClassVar[str] = "SVD triplets pruned by importance to a cubic total-rank budget"
    shardable: ClassVar[bool] = False  # the orthogonal regulariser and the scores use whole P, Q

    def __init__(self, spec: MethodSpec) -> None:
        super().__init__(spec)
        self.importance = Importance()  # the EMAs Ī, Ū (reset when an optimizer is built)

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.adalora_target_rank > spec.rank:
            raise LorakitError(f"adalora_target_rank ({spec.adalora_target_rank}) must be <= rank ({spec.rank})")
        steps = spec.adalora_total_steps
        if steps is not None and spec.adalora_t_init + spec.adalora_t_final >= steps:
            raise LorakitError(f"adalora_t_init + adalora_t_final must be < adalora_total_steps ({steps}), got "
                               f"{spec.adalora_t_init} + {spec.adalora_t_final} (defaults: ⌊T/10⌋ and ⌊T/5⌋)")

    def prepare(self, adapter: AdapterView) -> None:
        start_counter(adapter.method_state, STEP_KEY)

    def start(self, adapter: AdapterView) -> None:
        if self.spec.adalora_total_steps is None:
            raise LorakitError("the adalora schedule needs the number of optimizer steps: pass "
                               "adalora_total_steps=<steps> to attach (lorakit train sets it itself)")
        self.importance = Importance()

    def _end(self) -> int:
        """``T − t_final``: the last step that reallocates."""
        return self.spec.adalora_total_steps - self.spec.adalora_t_final

    @torch.no_grad()
    def before_step(self, adapter: AdapterView) -> None:
        """The orthogonal gradient, then the importance EMAs from this step's gradients."""
        forms = {name: layer.form for name, layer in adapter.layers.items()}
        if self.spec.adalora_orth_reg > 0:
            add_orthogonal_gradients(list(forms.values()), self.spec.adalora_orth_reg)
        if current_step(adapter.method_state, STEP_KEY) + 1 <= self._end():  # the allocation is fixed afterwards
            self.importance.update_all(forms)

    @torch.no_grad()
    def after_step(self, adapter: AdapterView) -> bool:
        """Apply the budget ``b(t)`` on reallocation steps; keep masked ``λ`` at 0."""
        spec, step, end = self.spec, next_step(adapter.method_state, STEP_KEY), self._end()
        forms = {name: layer.form for name, layer in adapter.layers.items()}
        if step == end or (spec.adalora_t_init < step < end and step % spec.adalora_delta_t == 0):
            count = len(forms)
            kept = budget(step, spec.rank * count, spec.adalora_target_rank * count, spec.adalora_t_init,
                          spec.adalora_t_final, spec.adalora_total_steps)
            allocate(forms, {name: self.importance.triplet_scores(name, form) for name, form in forms.items()}, kept)
        for form in forms.values():
            form.lam.masked_fill_(~form.mask, 0.0)
        return False

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {f"{kind}|{name}|{factor}": tensor for kind, table in
                (("smoothed", self.importance.smoothed), ("uncertainty", self.importance.uncertainty))
                for (name, factor), tensor in table.items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        for key, tensor in state.items():
            kind, name, factor = key.split("|")
            getattr(self.importance, kind)[(name, factor)] = tensor.to(device)
