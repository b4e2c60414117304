"""Each adapter owns its components and records every option's effective value."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lorakit
from lorakit.forms.lora import PairForm
from lorakit.optimizers.delta_lora import DeltaLora
from tiny import attach, batch, tiny_llama

TARGETS = ["q_proj", "v_proj", "up_proj"]
# options that make every schedule act within a few steps
OPTIONS = {
    "adalora": {"adalora_total_steps": 6, "adalora_t_init": 1, "adalora_t_final": 1},
    "lora_drop": {"drop_warmup_steps": 2, "drop_top_n": 2},
    "simplex_lora": {"simplex_every": 2, "simplex_reallocations": 2},
    "weight_lora_plus": {"selection_steps": 3, "weight_lora_k": 2},
    "delta_lora": {},
    "lora_fa": {"lora_fa_projected": True},
}


def fresh(method: str, seed: int):
    model = tiny_llama(seed=seed)
    return model, attach(model, method, rank=4, targets=TARGETS, **OPTIONS[method])


def step(model, optimizer, x) -> None:
    model.train()
    model(x, labels=x).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("method", list(OPTIONS))
def test_two_adapters_trained_in_turns_equal_each_trained_alone(method):
    """Two models of one process, adapted with the same method, stepped in turns: each ends with
    exactly the adapter it gets alone (no state is shared between adapters)."""
    xs = {1: batch(size=2, length=10, seed=1), 2: batch(size=2, length=10, seed=2)}
    alone = {}
    for seed in (1, 2):
        model, adapter = fresh(method, seed)
        optimizer = adapter.optimizer(lr=1e-2)
        for _ in range(6):
            step(model, optimizer, xs[seed])
        alone[seed] = adapter.state_dict()
    pairs = {seed: fresh(method, seed) for seed in (1, 2)}
    optimizers = {seed: adapter.optimizer(lr=1e-2) for seed, (_, adapter) in pairs.items()}
    for _ in range(6):
        for seed, (model, _) in pairs.items():
            step(model, optimizers[seed], xs[seed])
    for seed, (_, adapter) in pairs.items():
        together = adapter.state_dict()
        assert together.keys() == alone[seed].keys()
        assert all(torch.equal(together[k], alone[seed][k]) for k in together), method
    assert pairs[1][1].schedule is not pairs[2][1].schedule and pairs[1][1].recipe is not pairs[2][1].recipe


def with_default(monkeypatch, owner: type, name: str, value) -> None:
    """Change the declared default of option ``name`` of the component class ``owner``."""
    options = tuple(dataclasses.replace(o, default=value) if o.name == name else o for o in owner.options)
    assert options != owner.options
    monkeypatch.setattr(owner, "options", options)


@pytest.mark.parametrize("method,owner,option,value", [
    ("lora", PairForm, "alpha", 64.0),
    ("delta_lora", DeltaLora, "delta_ratio", 5.0),
])
def test_a_saved_adapter_keeps_its_values_when_a_default_changes(method, owner, option, value, tmp_path,
                                                                  monkeypatch):
    x = batch()
    model = tiny_llama()
    adapter = attach(model, method, rank=4)
    optimizer = adapter.optimizer(lr=1e-2)
    for _ in range(3):
        step(model, optimizer, x)
    adapter.save(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "lorakit_adapter.json").read_text())["method"]
    assert saved[option] == getattr(adapter.spec, option) and None not in saved.values()
    with torch.no_grad():
        expected = model.eval()(x).logits
    with_default(monkeypatch, owner, option, value)
    assert getattr(lorakit.attach(tiny_llama(), method, rank=4).spec, option) == value  # the new default applies
    fresh_model = tiny_llama()
    loaded = lorakit.load(fresh_model, tmp_path / "a")
    assert getattr(loaded.spec, option) == saved[option]
    with torch.no_grad():
        torch.testing.assert_close(fresh_model.eval()(x).logits, expected, atol=1e-6, rtol=0)


def test_a_format_1_adapter_still_loads(tmp_path):
    """Format 1 listed every option, null where unset: those take the defaults."""
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "olora_plus", rank=4, lr_ratio=0.5)
    adapter.save(tmp_path / "a")
    path = tmp_path / "a" / "lorakit_adapter.json"
    config = json.loads(path.read_text())
    config["format_version"] = 1
    config["method"] = {**config["method"], "lr_ratio_mode": "b_only", "delta_ratio": None, "gate_lr": None,
                        "lora_fa_projected": False, "vera_d_initial": None, "pissa_niter": None}
    path.write_text(json.dumps(config))
    fresh_model = tiny_llama()
    loaded = lorakit.load(fresh_model, tmp_path / "a")
    assert loaded.spec == adapter.spec
    with torch.no_grad():
        torch.testing.assert_close(fresh_model(x).logits, model(x).logits, atol=0, rtol=0)
