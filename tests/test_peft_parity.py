"""Parity with PEFT: same initial factors, same rewritten base weights, same AdamW step.

A tiny randomly initialised Llama (float32, eval mode, dropout 0) is copied twice: one copy gets
a lorakit adapter, the other a PEFT ``LoraConfig`` adapter on the same layers. Each test then
checks that the two agree where they should, and that the check itself can fail (the step has to
move the logits by much more than the parity tolerance).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import lorakit

pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.optimizers import create_loraplus_optimizer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tiny import attach  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

RANK, ALPHA = 4, 8.0
# Every projection of a Llama block: square (q, o), wide (k, v: 32×64, down: 64×96) and
# tall (gate, up: 96×64) weights, so QR and SVD run on all three kinds of shape.
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, WEIGHT_DECAY = 1e-2, 0.1

# Factor and base-weight tolerances (entries of A, B are O(0.1..0.5), of W O(0.02..0.1)).
# PiSSA: both sides call torch.linalg.svd on the same float32 matrix, so the factors agree to
# rounding (bit-identical on CPU). OLoRA: lorakit runs a thin QR of W[:, :r] and computes the
# rest of A as Q_rᵀ W[:, r:], PEFT slices a full QR of W; the Householder reflectors (hence
# the signs) are the same, the entries differ by float32 rounding, measured ≤ 1.5e-7. The
# tolerances below leave ~10× headroom over float32 rounding and are far below any real
# difference (a flipped sign or a wrong column changes entries by O(0.1)).
FACTOR_TOL = {"atol": 1e-6, "rtol": 1e-5}
WEIGHT_TOL = {"atol": 1e-6, "rtol": 1e-5}
# Logits after one step: same math in a different operation order; float32 rounding only.
LOGIT_TOL = {"atol": 1e-5, "rtol": 1e-4}
# The step must move the logits by far more than LOGIT_TOL, or the parity check is vacuous.
MIN_LOGIT_CHANGE = 1e-2


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights, float32, eval mode (no dropout anywhere)."""
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run single-threaded: these matrices are tiny, and OpenMP threads contending with other
    processes for the cores can make a 64×64 SVD take seconds instead of microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, 128, (2, 12), generator=generator)


def peft_model(model: nn.Module, init_lora_weights: bool | str) -> nn.Module:
    """``model`` with a PEFT LoRA adapter on TARGETS (same r, α, dropout 0 as lorakit's)."""
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0,
                        init_lora_weights=init_lora_weights)
    return get_peft_model(model, config)


def peft_layer(model: nn.Module, name: str) -> nn.Module:
    """PEFT's LoRA layer at lorakit's layer name ``name``."""
    return model.base_model.model.get_submodule(name)


def logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch).logits


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    """One optimizer step on the causal-LM loss of ``batch``."""
    optimizer.zero_grad()
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()


def group_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate per lorakit parameter group name."""
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


# -- spectral inits: factors and rewritten base weights ---------------------------------------

@pytest.mark.parametrize("method", ["olora", "pissa"])
def test_spectral_init_matches_peft(base_model: LlamaForCausalLM, batch: torch.Tensor, method: str) -> None:
    ours, theirs = copy.deepcopy(base_model), copy.deepcopy(base_model)
    adapter = attach(ours, method, rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0)
    theirs = peft_model(theirs, method)

    assert len(adapter.layers) == 2 * len(TARGETS)
    for name, layer in adapter.layers.items():
        other = peft_layer(theirs, name)
        assert layer.form.scale == other.scaling["default"]
        torch.testing.assert_close(layer.form.A, other.lora_A["default"].weight, **FACTOR_TOL)
        torch.testing.assert_close(layer.form.B, other.lora_B["default"].weight, **FACTOR_TOL)
        torch.testing.assert_close(layer.base_layer.weight, other.base_layer.weight, **WEIGHT_TOL)
        # The rewrite really happened (W ≠ W₀), on both sides.
        original = base_model.get_submodule(name).weight
        assert (layer.base_layer.weight - original).abs().max() > 1e-2

    # Attaching leaves the model's outputs unchanged, on both sides.
    before = logits(base_model, batch)
    torch.testing.assert_close(logits(ours, batch), before, **LOGIT_TOL)
    torch.testing.assert_close(logits(theirs, batch), before, **LOGIT_TOL)


# -- one AdamW step -------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A lorakit method and the PEFT setup that should train identically.

    ``peft_lr`` / ``peft_ratio``: arguments of PEFT's ``create_loraplus_optimizer`` (ratio None:
    plain AdamW at ``LR``). ``rates``: lorakit's expected ``(η_A, η_B)``.
    """

    method: str
    peft_init: bool | str
    overrides: dict[str, Any] = field(default_factory=dict)
    peft_lr: float = LR
    peft_ratio: float | None = None
    rates: tuple[float, float] = (LR, LR)

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.method}[{extra}]" if extra else self.method


CASES = [
    Case("lora", True),
    Case("olora", "olora"),
    Case("pissa", "pissa"),
    Case("lora_plus", True, peft_ratio=16.0, rates=(LR, 16 * LR)),
    Case("lora_plus", True, {"lr_ratio": 4.0}, peft_ratio=4.0, rates=(LR, 4 * LR)),
    # Symmetric mode has no PEFT switch: (η/λ, ηλ) is PEFT's LoRA+ at base rate η/λ and ratio λ².
    # With OLoRA (B ≠ 0) A gets a gradient in the first step, so η_A matters beyond weight decay.
    Case("olora_plus", "olora", {"lr_ratio": 4.0, "lr_ratio_mode": "symmetric"},
         peft_lr=LR / 4, peft_ratio=16.0, rates=(LR / 4, LR * 4)),
    # OLoRA+ with λ < 1 ("refinement": A learns faster than B).
    Case("olora_plus", "olora", {"lr_ratio": 0.5}, peft_ratio=0.5, rates=(LR, LR / 2)),
]


def peft_optimizer(model: nn.Module, case: Case) -> torch.optim.Optimizer:
    if case.peft_ratio is None:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=case.peft_lr,
                                     loraplus_lr_ratio=case.peft_ratio,
                                     loraplus_weight_decay=WEIGHT_DECAY)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_one_adamw_step_matches_peft(base_model: LlamaForCausalLM, batch: torch.Tensor, case: Case) -> None:
    ours, theirs = copy.deepcopy(base_model), copy.deepcopy(base_model)
    adapter = attach(ours, case.method, rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0,
                             **case.overrides)
    theirs = peft_model(theirs, case.peft_init)

    for name, layer in adapter.layers.items():
        other = peft_layer(theirs, name)
        if case.peft_init is True:
            # Kaiming A is random (B = 0): lorakit draws it from a per-layer generator seeded by
            # (seed, layer name), PEFT from the global RNG, so the two inits differ by RNG alone.
            # Copy lorakit's factors into PEFT so that the step below compares the training
            # math (forward, gradients, parameter groups, AdamW) rather than random draws.
            with torch.no_grad():
                other.lora_A["default"].weight.copy_(layer.form.A)
                other.lora_B["default"].weight.copy_(layer.form.B)
        else:
            # Spectral inits are deterministic: each side keeps its own factors (checked equal).
            torch.testing.assert_close(layer.form.A, other.lora_A["default"].weight, **FACTOR_TOL)
            torch.testing.assert_close(layer.form.B, other.lora_B["default"].weight, **FACTOR_TOL)

    trainable = [p for p in theirs.parameters() if p.requires_grad]
    assert adapter.num_parameters() == sum(p.numel() for p in trainable)

    before = logits(ours, batch)
    torch.testing.assert_close(logits(theirs, batch), before, **LOGIT_TOL)

    ours_opt = adapter.optimizer(lr=LR, weight_decay=WEIGHT_DECAY)
    theirs_opt = peft_optimizer(theirs, case)
    train_step(ours, ours_opt, batch)
    train_step(theirs, theirs_opt, batch)

    after = logits(ours, batch)
    assert (after - before).abs().max() > MIN_LOGIT_CHANGE
    torch.testing.assert_close(logits(theirs, batch), after, **LOGIT_TOL)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_param_group_rates(base_model: LlamaForCausalLM, case: Case) -> None:
    model = copy.deepcopy(base_model)
    adapter = attach(model, case.method, rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0,
                             **case.overrides)
    optimizer = adapter.optimizer(lr=LR, weight_decay=WEIGHT_DECAY)
    rates = group_rates(optimizer)
    if adapter.spec.optimizer == "lora_plus":
        lr_A, lr_B = case.rates
        assert rates == pytest.approx({"A": lr_A, "B": lr_B})
        groups = {g["name"]: g["params"] for g in optimizer.param_groups}
        assert {id(p) for p in groups["A"]} == {id(lay.form.A) for lay in adapter.layers.values()}
        assert {id(p) for p in groups["B"]} == {id(lay.form.B) for lay in adapter.layers.values()}
    else:
        assert rates == pytest.approx({"adapter": LR})
    assert all(g["weight_decay"] == WEIGHT_DECAY for g in optimizer.param_groups)


def test_lora_plus_default_ratio_is_16(base_model: LlamaForCausalLM) -> None:
    adapter = lorakit.attach(copy.deepcopy(base_model), "lora_plus", rank=RANK, alpha=ALPHA,
                             targets=TARGETS)
    assert group_rates(adapter.optimizer(lr=2e-4)) == pytest.approx({"A": 2e-4, "B": 16 * 2e-4})


def test_symmetric_rates_are_eta_over_lambda_and_eta_lambda(base_model: LlamaForCausalLM) -> None:
    adapter = lorakit.attach(copy.deepcopy(base_model), "lora_plus", rank=RANK, alpha=ALPHA,
                             targets=TARGETS, lr_ratio=8.0, lr_ratio_mode="symmetric")
    assert group_rates(adapter.optimizer(lr=1e-3)) == pytest.approx({"A": 1e-3 / 8, "B": 1e-3 * 8})


# -- randomised PiSSA (pissa_niter) ----------------------------------------------------------

def plant_gapped_spectrum(model: nn.Module, generator: torch.Generator) -> None:
    """Give every targeted weight singular values with a 10× gap after the first RANK.

    torch.svd_lowrank with q = r and niter subspace iterations converges like
    (σ_{r+1}/σ_r)^(2·niter+1); the random init's spectrum is nearly flat (σ₄/σ₅ ≈ 1.02), so two
    runs from different random starts land on visibly different rank-r subspaces. With a 10×
    gap, niter = 4 reaches float32 precision from any start, so lorakit's and PEFT's results
    can be compared to each other and to the exact truncated SVD.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
                out_features, in_features = module.weight.shape
                k = min(out_features, in_features)
                U, _ = torch.linalg.qr(torch.randn(out_features, k, generator=generator))
                V, _ = torch.linalg.qr(torch.randn(in_features, k, generator=generator))
                S = torch.cat([torch.tensor([0.4, 0.3, 0.25, 0.2]), torch.linspace(0.02, 0.002, k - RANK)])
                module.weight.copy_((U * S) @ V.T)


def truncated(weight: torch.Tensor, rank: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


def test_pissa_niter_matches_peft_on_gapped_spectrum(batch: torch.Tensor) -> None:
    # PEFT's "pissa_niter_4" draws svd_lowrank's random start from the global torch RNG; lorakit
    # seeds its own from (seed, layer name) and leaves the global RNG alone. The factors are
    # therefore not comparable entry by entry (and on a flat spectrum not even their products:
    # max |Δ(s·BA)| ≈ 0.05 on the random init's weights). On a spectrum with a clear gap after
    # r, both must find the principal subspace: s·BA equals the rank-r truncated SVD on both
    # sides (measured |Δ| ≤ 7e-8 for entries up to 0.08, hence FACTOR_TOL), and the rewritten
    # base weights agree.
    base = tiny_llama()
    plant_gapped_spectrum(base, torch.Generator().manual_seed(7))
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    adapter = lorakit.attach(ours, "pissa", rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0,
                             pissa_niter=4)
    torch.manual_seed(99)
    theirs = peft_model(theirs, "pissa_niter_4")

    for name, layer in adapter.layers.items():
        other = peft_layer(theirs, name)
        W0 = base.get_submodule(name).weight
        ours_product = layer.form.delta_weight().detach()
        theirs_product = other.scaling["default"] * other.lora_B["default"].weight @ other.lora_A["default"].weight
        best = truncated(W0, RANK)
        torch.testing.assert_close(ours_product, best, **FACTOR_TOL)
        torch.testing.assert_close(theirs_product.detach(), best, **FACTOR_TOL)
        torch.testing.assert_close(layer.base_layer.weight, other.base_layer.weight, **WEIGHT_TOL)
    torch.testing.assert_close(logits(ours, batch), logits(base, batch), **LOGIT_TOL)


def test_pissa_niter_is_seeded_by_lorakit_not_the_global_rng(base_model: LlamaForCausalLM) -> None:
    # The reason the test above cannot compare factors with PEFT's: lorakit's randomised SVD
    # depends on its seed only, PEFT's on the global RNG state.
    def factors(global_seed: int, seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        adapter = lorakit.attach(copy.deepcopy(base_model), "pissa", rank=RANK, alpha=ALPHA,
                                 targets=TARGETS, seed=seed, pissa_niter=4)
        return [layer.form.A.detach().clone() for layer in adapter.layers.values()]

    first, second, other_seed = factors(1, 0), factors(2, 0), factors(1, 1)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert any((a - c).abs().max() > 1e-3 for a, c in zip(first, other_seed))
