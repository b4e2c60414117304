"""LoRA-drop: importance during the warm-up, kept layers, shared adapters for the rest."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.train.checkpoint import latest_checkpoint
from test_contracts import train_steps
from test_train import ADAPTER, Crash, crash_at, run
from tiny import batch, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def dropped_model(**options):
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora_drop", rank=4, targets=TARGETS, drop_warmup_steps=3, **options)
    losses = train_steps(model, adapter, batch(size=4, length=24), steps=8, lr=1e-2)
    return model, adapter, losses


def test_top_n_keeps_n_layers_and_the_rest_share_one_adapter_per_shape():
    model, adapter, losses = dropped_model(drop_top_n=4)
    kept = [name for name in adapter.layers if name not in adapter.shared and
            not any(owner == name for owner in adapter.shared.values())]
    owners = set(adapter.shared.values())
    assert len(kept) == 4
    shapes = {tuple(adapter.layers[n].base_layer.weight.shape) for n in adapter.layers if n not in kept}
    assert len(owners) == len(shapes)  # one shared adapter per weight shape of the dropped layers
    for name, owner in adapter.shared.items():
        assert adapter.layers[name].form is adapter.layers[owner].form
    assert len(adapter.forms()) == 4 + len(shapes)
    assert losses[-1] < losses[0]


def test_threshold_selection_uses_the_warmup_importance():
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora_drop", rank=4, targets=TARGETS, drop_warmup_steps=2,
                             drop_threshold=0.5)
    optimizer = adapter.optimizer(lr=1e-2)
    x = batch(size=4, length=24)
    model.train()
    for _ in range(2):
        model(x, labels=x).loss.backward()
        if _ == 1:  # just before the selection step: the importance the schedule will use
            adapter.schedule.accumulator.sync()  # (the step's own sync then finds nothing new)
            importance = adapter.schedule.accumulator.importance()
        optimizer.step()
        optimizer.zero_grad()
    ranked = sorted(importance, key=importance.get, reverse=True)
    cumulative, expected = 0.0, []
    for name in ranked:
        expected.append(name)
        cumulative += importance[name]
        if cumulative >= 0.5:
            break
    dropped = set(adapter.shared) | set(adapter.shared.values())
    assert set(adapter.layers) - dropped == set(expected)


def test_evaluations_during_the_warmup_do_not_count_as_importance():
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora_drop", rank=4, targets=TARGETS, drop_warmup_steps=3)
    optimizer = adapter.optimizer(lr=1e-2)
    accumulator = adapter.schedule.accumulator
    x = batch(size=4, length=24)
    model.train()
    model(x, labels=x).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    before = dict(accumulator.totals), dict(accumulator.tokens)
    assert before[0] and all(tokens == 4 * 24 for tokens in before[1].values())  # no padding here
    model.eval()  # what evaluate_loss does
    with torch.no_grad():
        model(batch(seed=5, size=8, length=24))
    assert accumulator.pending == {}  # a counted forward would wait here for the next step's sync
    model.train()
    model(x)
    assert set(accumulator.pending) == set(before[0])  # (the check above can fail)


def test_a_warmup_without_training_forwards_is_an_error():
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora_drop", rank=4, targets=TARGETS, drop_warmup_steps=1)
    optimizer = adapter.optimizer(lr=1e-2)
    with pytest.raises(lorakit.LorakitError, match="saw no training forward pass"):
        optimizer.step()


def test_save_load_and_merge_keep_the_shared_adapters(tmp_path):
    x = batch()
    model, adapter, _ = dropped_model(drop_top_n=5)
    model.eval()
    with torch.no_grad():
        expected = model(x).logits
    adapter.save(tmp_path / "drop")
    saved = load_file(tmp_path / "drop" / "lorakit_adapter.safetensors")
    assert not any(key.startswith(tuple(f"{name}." for name in adapter.shared)) for key in saved)
    fresh = tiny_llama()
    loaded = lorakit.load(fresh, tmp_path / "drop")
    assert loaded.shared == adapter.shared
    for name, owner in loaded.shared.items():
        assert loaded.layers[name].form is loaded.layers[owner].form
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(x).logits, expected, atol=2e-5, rtol=0)


def test_resume_across_the_selection_equals_uninterrupted(tiny_model_dir, addition_data, tmp_path):
    extra = ("method.name=lora_drop", "method.lr_ratio=null", "method.drop_warmup_steps=4", "method.drop_top_n=5")
    run(tiny_model_dir, addition_data, tmp_path / "full", *extra)
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, callbacks=[crash_at(5)])
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000003"  # before the selection at 4
    run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, resume=True)
    full, cut = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[key], cut[key]) for key in full)
    config = json.loads((tmp_path / "full" / "adapter" / "lorakit_adapter.json").read_text())
    assert len(config["shared"]) > 0  # the selection really happened


def test_warm_up_hooks_are_registered_once_and_removed_by_a_merge():
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora_drop", rank=4, drop_warmup_steps=5)
    count = lambda: len(model._forward_pre_hooks) + sum(len(lay._forward_hooks) for lay in adapter.layers.values())  # noqa: E731
    adapter.optimizer(lr=1e-2)
    once = count()
    adapter.optimizer(lr=1e-2)  # a second optimizer: the warm-up still records each forward once
    assert count() == once == 1 + len(adapter.layers)
    merged = adapter.merge_and_unload()
    assert not merged._forward_pre_hooks and not any(m._forward_hooks for m in merged.modules())


SYNC_CHECK = """
import torch, torch.distributed as dist
from lorakit.ops.layer_importance import ImportanceAccumulator
dist.init_process_group("gloo")
rank = dist.get_rank()
accumulator = ImportanceAccumulator()
accumulator.pending = {"layer": (torch.tensor(float(rank + 1), dtype=torch.float64), torch.tensor(10.0 * (rank + 1)))}
accumulator.sync()
assert accumulator.pending == {}
assert (float(accumulator.totals["layer"]), float(accumulator.tokens["layer"])) == (3.0, 30.0), rank
dist.destroy_process_group()
"""


def test_importance_sums_are_synced_over_processes(tmp_path):
    """Each of two processes (gloo) saw its own batches; after ``sync`` both hold the sums of both."""
    import subprocess
    import sys

    script = tmp_path / "sync_check.py"
    script.write_text(SYNC_CHECK)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # each process asserts it holds 3 and 30
