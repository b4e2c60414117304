"""Rank schedules that change adapters during training: WeightLoRA(+), SimplexLoRA."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.layer import AdaptedLinear
from lorakit.schedules.weight_lora import keep_top_k
from test_contracts import train_steps
from tiny import attach, batch, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train(model, adapter, steps, lr=1e-2):
    """``steps`` AdamW steps on one batch; the optimizer (for the tests that look into it) and losses."""
    optimizer = adapter.optimizer(lr=lr)
    return optimizer, train_steps(model, adapter, batch(size=4, length=24), steps=steps, optimizer=optimizer)


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_keep_top_k():
    gates = torch.tensor([0.5, -2.0, 0.1, 1.0])
    assert keep_top_k(gates, 2).tolist() == [0.0, -2.0, 0.0, 1.0]
    assert keep_top_k(gates, 9).tolist() == gates.tolist()
    assert keep_top_k(torch.ones(4), 2).tolist() == [1.0, 1.0, 0.0, 0.0]  # ties: the earlier index


@pytest.mark.parametrize("method", ["weight_lora", "weight_lora_plus"])
def test_weight_lora_keeps_exactly_k_adapters(method):
    model = tiny_llama()
    adapter = attach(model, method, rank=4, targets=TARGETS, weight_lora_k=5, selection_steps=3,
                             gate_lr=5e-2)
    assert len(adapter.layers) == 14
    optimizer, losses = train(model, adapter, steps=6)
    assert len(adapter.layers) == 5
    assert sum(isinstance(m, AdaptedLinear) for m in model.modules()) == 5
    assert all(form.gate is None for form in adapter.forms())  # folded into the scales
    gate_group = next(g for g in optimizer.param_groups if g["name"] == "gate")
    assert gate_group["params"] == []
    ranks = {layer.form.rank for layer in adapter.layers.values()}
    if method == "weight_lora":
        assert ranks == {4}
    else:  # the freed budget: r₀·n/K = 4·14/5 → 11, capped by the layer's min(out, in) = 32
        assert ranks == {11}
    assert losses[-1] < losses[0]


def kept_layers(data_seed, **options):
    model = tiny_llama()
    adapter = lorakit.attach(model, "weight_lora", rank=4, targets=TARGETS, weight_lora_k=5, selection_steps=6,
                             gate_lr=5e-2, **options)
    optimizer = adapter.optimizer(lr=1e-2)
    x = batch(seed=data_seed)
    for _ in range(6):
        model(x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return frozenset(adapter.layers)


def test_weight_lora_selects_by_the_data():
    """With B = 0 at init, ω has no gradient at the first step; projecting right after it keeps
    the same K layers whatever the data. After the warm-up the choice follows the gates."""
    assert len({kept_layers(seed, selection_warmup=0) for seed in range(4)}) == 1  # the failure mode
    assert len({kept_layers(seed) for seed in range(4)}) > 1


def test_weight_lora_selects_after_a_single_step():
    """selection_steps=1: no room for a warm-up, the default gives way (none)."""
    model = tiny_llama()
    adapter = lorakit.attach(model, "weight_lora", rank=4, targets=TARGETS, weight_lora_k=3, selection_steps=1)
    train(model, adapter, steps=2)
    assert len(adapter.layers) == 3


def test_weight_lora_selection_end_leaves_outputs_unchanged():
    """Removing ω = 0 adapters, folding ω into s and growing the rest keep the model as it was."""
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "weight_lora_plus", rank=4, targets=TARGETS, weight_lora_k=4,
                             selection_steps=1000)
    optimizer, _ = train(model, adapter, steps=3)
    with torch.no_grad():  # what the selection projection would leave after the last step
        gates = keep_top_k(torch.stack([f.gate for f in adapter.forms()]), 4)
        for form, value in zip(adapter.forms(), gates):
            form.gate.copy_(value)
    before = logits(model, x)
    adapter.schedule.finish_selection(adapter, step=3)
    adapter.refresh_optimizer(optimizer)
    torch.testing.assert_close(logits(model, x), before, atol=1e-5, rtol=0)
    assert len(adapter.layers) == 4 and {layer.form.rank for layer in adapter.layers.values()} == {14}
    train(model, adapter, steps=2)  # and training goes on


def test_simplex_lora_gates_stay_on_the_simplex_and_ranks_within_budget():
    model = tiny_llama()
    adapter = lorakit.attach(model, "simplex_lora", rank=4, targets=TARGETS, simplex_every=2,
                             simplex_reallocations=2, gate_lr=2e-2)
    n = len(adapter.layers)
    optimizer = adapter.optimizer(lr=1e-2)
    x = batch(size=4, length=24)
    model.train()
    losses, totals = [], []
    for step in range(1, 9):
        loss = model(x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        gates = [float(f.gate.detach()) for f in adapter.forms() if f.gate is not None]
        if step < 4:
            assert min(gates) >= 0 and sum(gates) == pytest.approx(1.0, abs=1e-6)
        totals.append(sum(layer.form.rank for layer in adapter.layers.values()))
    assert max(totals) <= 4 * n + n
    assert totals[1] != 4 * n or totals[3] != 4 * n  # the reallocations changed something
    assert all(form.gate is None for form in adapter.forms())  # plain LoRA after the last one
    assert losses[-1] < losses[0]


def test_grow_mid_run_keeps_outputs_and_optimizer_working():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "olora", rank=4, targets=TARGETS)
    optimizer, _ = train(model, adapter, steps=2)
    before = logits(model, x)
    name, other = list(adapter.layers)[:2]
    old_A = adapter.layers[name].form.A
    assert old_A in optimizer.state
    other_state = optimizer.state[adapter.layers[other].form.A]["exp_avg"].clone()
    adapter.resize_layer(name, 9, torch.Generator().manual_seed(0))
    adapter.refresh_optimizer(optimizer)
    torch.testing.assert_close(logits(model, x), before, atol=1e-5, rtol=0)
    new_A = adapter.layers[name].form.A
    assert new_A.shape == (9, 64)
    assert old_A not in optimizer.state and new_A not in optimizer.state  # reset for that layer only
    assert torch.equal(optimizer.state[adapter.layers[other].form.A]["exp_avg"], other_state)
    model.train()
    loss = model(x, labels=x).loss
    loss.backward()
    optimizer.step()
    assert new_A in optimizer.state and not torch.equal(logits(model, x), before)


def test_removing_a_spectral_layer_restores_its_original_weight():
    model = tiny_llama()
    adapter = lorakit.attach(model, "olora", rank=4, targets=["q_proj"])
    adapter.resize_layer("model.layers.0.self_attn.q_proj", 0)
    original = tiny_llama().model.layers[0].self_attn.q_proj.weight
    restored = model.model.layers[0].self_attn.q_proj
    assert type(restored) is torch.nn.Linear
    torch.testing.assert_close(restored.weight, original, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["weight_lora_plus", "simplex_lora"])
def test_variable_rank_adapters_save_and_load_exactly(method, tmp_path):
    x = batch()
    model = tiny_llama()
    options = {"weight_lora_k": 5, "selection_steps": 2} if method == "weight_lora_plus" else \
        {"simplex_every": 2, "simplex_reallocations": 1}
    adapter = attach(model, method, init="olora", rank=4, targets=TARGETS, **options)
    train(model, adapter, steps=4)
    assert len({layer.form.rank for layer in adapter.layers.values()}) >= 1
    adapter.save(tmp_path / "adapter")
    fresh = tiny_llama()
    loaded = lorakit.load(fresh, tmp_path / "adapter")
    assert {n: lay.form.rank for n, lay in loaded.layers.items()} == {
        n: lay.form.rank for n, lay in adapter.layers.items()}
    assert torch.equal(logits(fresh, x), logits(model, x))


def test_olora_init_lora_plus_and_simplex_lora_compose_and_merge():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "simplex_lora", init="olora", optimizer="lora_plus", lr_ratio=0.5, rank=4,
                             targets=TARGETS, simplex_every=2, simplex_reallocations=1, gate_lr=2e-2)
    assert adapter.spec.components() == "lora × olora × lora_plus × simplex_lora"
    torch.testing.assert_close(logits(model, x), logits(tiny_llama(), x), atol=2e-5, rtol=0)
    optimizer, losses = train(model, adapter, steps=4)
    assert [g["name"] for g in optimizer.param_groups] == ["A", "B", "gate"]
    assert losses[-1] < losses[0]
    assert len({layer.form.rank for layer in adapter.layers.values()}) > 1 or len(adapter.layers) < 14
    adapted = logits(model, x)
    merged = adapter.merge_and_unload()
    torch.testing.assert_close(logits(merged, x), adapted, atol=2e-5, rtol=0)
