"""Parity with PEFT for DoRA, VeRA and LoRA-FA: same start, same logits after one step.

Same set-up as ``test_peft_parity``: a tiny float32 Llama copied twice, lorakit on one copy and
PEFT on the other, every projection of a block targeted (square, wide and tall weights). Where
the two differ by design the test says so and compares the math, not the accident.
"""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit

pytest.importorskip("peft")

from peft import LoraConfig, VeraConfig, get_peft_model  # noqa: E402
from peft.optimizers import create_lorafa_optimizer  # noqa: E402

from test_peft_parity import (  # noqa: E402
    ALPHA,
    FACTOR_TOL,
    LOGIT_TOL,
    LR,
    MIN_LOGIT_CHANGE,
    RANK,
    TARGETS,
    WEIGHT_DECAY,
    logits,
    one_thread,
    peft_layer,
    tiny_llama,
    train_step,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
one_thread = one_thread  # the fixture, re-exported for this module


@pytest.fixture(scope="module")
def base_model():
    return tiny_llama()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1234))


def step_both(ours, ours_opt, theirs, theirs_opt, batch) -> None:
    before = logits(ours, batch)
    torch.testing.assert_close(logits(theirs, batch), before, **LOGIT_TOL)
    train_step(ours, ours_opt, batch)
    train_step(theirs, theirs_opt, batch)
    after = logits(ours, batch)
    assert (after - before).abs().max() > MIN_LOGIT_CHANGE
    torch.testing.assert_close(logits(theirs, batch), after, **LOGIT_TOL)


@pytest.mark.parametrize("init", ["kaiming", "olora"])
def test_dora_one_adamw_step_matches_peft(base_model, batch, init) -> None:
    ours, theirs = copy.deepcopy(base_model), copy.deepcopy(base_model)
    adapter = lorakit.attach(ours, "dora", init=init, rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0)
    theirs = get_peft_model(theirs, LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, use_dora=True,
        init_lora_weights=True if init == "kaiming" else "olora"))
    for name, layer in adapter.layers.items():
        other = peft_layer(theirs, name)
        if init == "kaiming":  # random A: copy lorakit's draw (see test_peft_parity)
            with torch.no_grad():
                other.lora_A["default"].weight.copy_(layer.form.A)
                other.lora_B["default"].weight.copy_(layer.form.B)
        # m starts at ‖W_original‖_row on both sides, spectral init or not
        original = base_model.get_submodule(name).weight
        torch.testing.assert_close(layer.form.magnitude, torch.linalg.vector_norm(original, dim=1), **FACTOR_TOL)
        torch.testing.assert_close(layer.form.magnitude, other.lora_magnitude_vector["default"].weight,
                                   **FACTOR_TOL)
    trainable = [p for p in theirs.parameters() if p.requires_grad]
    assert adapter.num_parameters() == sum(p.numel() for p in trainable)
    step_both(ours, adapter.optimizer(lr=LR, weight_decay=WEIGHT_DECAY), theirs,
              torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY), batch)


def test_vera_one_adamw_step_matches_peft(base_model, batch) -> None:
    # lorakit and PEFT both draw A_sh then B_sh He-uniform from a generator seeded with the
    # same number, so the shared projections agree without copying anything.
    ours, theirs = copy.deepcopy(base_model), copy.deepcopy(base_model)
    adapter = lorakit.attach(ours, "vera", rank=16, targets=TARGETS, seed=3, lr_scale=1.0)  # PEFT: the given rate
    theirs = get_peft_model(theirs, VeraConfig(r=16, target_modules=TARGETS, projection_prng_key=3,
                                               vera_dropout=0.0, d_initial=0.1))
    A_shared, B_shared = theirs.base_model.vera_A["default"], theirs.base_model.vera_B["default"]
    for name, layer in adapter.layers.items():
        torch.testing.assert_close(layer.form.A_shared, A_shared[:, :layer.in_features], atol=0, rtol=0)
        torch.testing.assert_close(layer.form.B_shared, B_shared[:layer.out_features], atol=0, rtol=0)
        other = peft_layer(theirs, name)
        torch.testing.assert_close(layer.form.d, other.vera_lambda_d["default"], atol=0, rtol=0)
        torch.testing.assert_close(layer.form.b, other.vera_lambda_b["default"], atol=0, rtol=0)
    trainable = [p for p in theirs.parameters() if p.requires_grad]
    assert adapter.num_parameters() == sum(p.numel() for p in trainable)
    step_both(ours, adapter.optimizer(lr=LR, weight_decay=WEIGHT_DECAY), theirs,
              torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY), batch)


def test_lora_fa_projected_step_matches_peft(base_model, batch, monkeypatch) -> None:
    """PEFT's ``create_lorafa_optimizer`` against lorakit's ``lora_fa`` with ``lora_fa_projected``.

    Where they differ by design, and how the test bridges it: PEFT runs its own Adam, which adds
    ``eps`` to ``√v`` before the bias correction — at step 1 that is torch AdamW with
    ``eps·/√(1−β₂)``, passed below; PEFT computes the projection under bf16 autocast whenever
    bf16 is available (on this CPU too), which the test turns off to compare float32 math;
    weight decay is 0 because PEFT applies it after the Adam update and torch before.
    """
    import peft.optimizers.lorafa as peft_lorafa

    monkeypatch.setattr(peft_lorafa, "is_bf16_available", lambda: False)
    ours, theirs = copy.deepcopy(base_model), copy.deepcopy(base_model)
    adapter = lorakit.attach(ours, "lora_fa", rank=RANK, alpha=ALPHA, targets=TARGETS, seed=0,
                             lora_fa_projected=True)
    theirs = get_peft_model(theirs, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                               lora_dropout=0.0))
    for name, layer in adapter.layers.items():
        other = peft_layer(theirs, name)
        with torch.no_grad():
            other.lora_A["default"].weight.copy_(layer.form.A)
            other.lora_B["default"].weight.copy_(layer.form.B)
    theirs_opt = create_lorafa_optimizer(theirs, r=RANK, lora_alpha=ALPHA, lr=LR, weight_decay=0.0)
    ours_opt = adapter.optimizer(lr=LR, weight_decay=0.0, eps=1e-6 / (1 - 0.999) ** 0.5)
    A_before = {name: layer.form.A.detach().clone() for name, layer in adapter.layers.items()}
    step_both(ours, ours_opt, theirs, theirs_opt, batch)
    for name, layer in adapter.layers.items():
        assert torch.equal(layer.form.A, A_before[name])
        assert torch.equal(peft_layer(theirs, name).lora_A["default"].weight, A_before[name])
