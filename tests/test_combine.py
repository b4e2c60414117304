"""lorakit combine: PEFT's add_weighted_adapter rules on lorakit adapters, checked against PEFT on
the same exported pairs; the result is a plain adapter that saves, loads and trains further."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from peft.utils import merge_utils

import lorakit
from lorakit import LorakitError
from lorakit.cli import main
from lorakit.combine import combine, merge_rule
from lorakit.io.adapter_files import CONFIG_FILE
from lorakit.io.as_lora import total_change
from test_contracts import logits
from test_peft_export import trained
from tiny import batch, tiny_llama


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two trained rank-4 LoRA adapters of the tiny Llama, saved by lorakit and exported for PEFT."""
    folder = tmp_path_factory.mktemp("two")
    for name, seed in (("a", 0), ("b", 1)):
        _, adapter = trained("lora", seed=seed)
        adapter.save(folder / name)
        adapter.save_peft(folder / f"peft_{name}")
    return folder


def peft_combined(folder, weights, how, density=None):
    model = PeftModel.from_pretrained(tiny_llama(), folder / "peft_a", adapter_name="a")
    model.load_adapter(folder / "peft_b", adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "c", combination_type=how, density=density)
    model.set_adapter("c")
    return model.eval()


@pytest.mark.parametrize("how,density", [("cat", None), ("linear", None), ("svd", None), ("ties", 0.5),
                                         ("magnitude_prune", 0.3), ("ties_svd", 0.5), ("magnitude_prune_svd", 0.7)])
def test_every_deterministic_rule_gives_peft_s_model(two, how, density):
    weights = [0.7, -0.4]
    x = batch(seed=2)
    expected = logits(peft_combined(two, weights, how, density), x)
    model = tiny_llama()
    combine(model, [two / "a", two / "b"], weights, how, density)
    torch.testing.assert_close(logits(model, x), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("rule", ["dare_linear", "dare_ties"])
def test_dare_draws_as_peft_does_from_the_same_seed(rule):
    tensors = [torch.randn(6, 10, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    weights = torch.tensor([0.5, -1.0, 2.0])
    torch.manual_seed(7)
    ours = merge_rule(rule, tensors, weights, 0.4)
    torch.manual_seed(7)
    theirs = getattr(merge_utils, rule)(tensors, weights, 0.4)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_cat_is_exact_for_methods_that_rewrite_or_move_the_base(tmp_path):
    changes = []
    for name, method in (("olora", "olora"), ("delta", "delta_lora")):
        _, adapter = trained(method)
        adapter.save(tmp_path / name)
        changes.append({layer: total_change(adapter, layer) for layer in adapter.layers})
    model = tiny_llama()
    combined = combine(model, [tmp_path / "olora", tmp_path / "delta"], [1.0, 0.5], "cat")
    for layer in combined.layers:
        B, A = combined.layers[layer].form.factors()
        torch.testing.assert_close(B @ A, changes[0][layer] + 0.5 * changes[1][layer], atol=1e-5, rtol=0)


def test_the_combination_saves_loads_and_trains_further(two, tmp_path):
    model = tiny_llama()
    adapter = combine(model, [two / "a", two / "b"], [1.0, 1.0], "svd", rank=3)
    x = batch(seed=4)
    before = logits(model, x)
    adapter.save(tmp_path / "c")
    reloaded = tiny_llama()
    lorakit.load(reloaded, tmp_path / "c")
    torch.testing.assert_close(logits(reloaded, x), before, atol=1e-6, rtol=0)
    assert {layer.form.rank for layer in adapter.layers.values()} == {3}
    optimizer = adapter.optimizer(lr=1e-2)
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    assert not torch.allclose(logits(model, x), before)


def test_bad_combinations_are_one_line_errors_and_write_nothing(two, tmp_path, capsys):
    a, b = str(two / "a"), str(two / "b")
    out = tmp_path / "out"
    cases = [
        ([a, b, str(out), "--weights", "1"], "2 adapters but 1 weights"),
        ([a, b, str(out), "--how", "ties"], "--how ties needs --density in (0, 1]"),
        ([a, b, str(out), "--how", "mean"], "--how 'mean' is not one of cat, linear"),
        ([a, b, str(out), "--how", "cat", "--rank", "2"], "with an svd rule"),
        ([a, str(out)], "combine needs at least two adapters"),
    ]
    for args, message in cases:
        assert main(["combine", *args]) == 2, args
        assert message in capsys.readouterr().err and not out.exists()
    _, olora = trained("olora")  # exports at rank 8, the LoRAs at 4
    olora.save(tmp_path / "olora")
    with pytest.raises(LorakitError, match=r"ranks \[4, 8\]; use --how cat or svd"):
        combine(tiny_llama(), [two / "a", tmp_path / "olora"], [1, 1], "linear")
    lorakit.attach(tiny_llama(), "lora", rank=4, targets=["q_proj"]).save(tmp_path / "fewer")
    with pytest.raises(LorakitError, match="adapt other layers"):
        combine(tiny_llama(), [two / "a", tmp_path / "fewer"], [1, 1], "cat")
    other = tmp_path / "other"
    other.mkdir()
    for file in (two / "b").iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    config = json.loads((other / CONFIG_FILE).read_text())
    (other / CONFIG_FILE).write_text(json.dumps({**config, "base_model": "another/model"}))
    assert main(["combine", a, str(other), str(out)]) == 2
    assert "was trained on another/model" in capsys.readouterr().err and not out.exists()
