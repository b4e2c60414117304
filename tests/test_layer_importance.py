"""LoRA-drop's building blocks: layer importance E‖ΔW x‖² and threshold / top-n selection."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.ops.layer_importance import output_importance, select_layers
from tiny import batch, tiny_llama


@pytest.mark.parametrize("padded", [False, True])
def test_importance_is_the_normalised_mean_squared_adapter_output(padded):
    """By hand, over the positions the attention mask keeps (right padding excluded)."""
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora", rank=4, targets=["q_proj", "v_proj"])
    with torch.no_grad():
        for scale, form in zip([1.0, 2.0, 0.5, 3.0], adapter.forms()):
            form.B.fill_(0.01 * scale)
    x = batch(size=3, length=10)
    mask = torch.ones_like(x)
    if padded:
        mask[0, 4:] = 0
        mask[2, 7:] = 0
    importance = output_importance(adapter, [{"input_ids": x, "attention_mask": mask}])
    assert sum(importance.values()) == pytest.approx(1.0)
    # by hand: capture each layer's input and compute ‖s·B A x‖² per token
    inputs = {}

    def capture(name):
        def hook(module, args, output):  # returns None: the output stays as it is
            inputs[name] = args[0].detach().clone()
        return hook

    hooks = [layer.register_forward_hook(capture(name)) for name, layer in adapter.layers.items()]
    with torch.no_grad():
        model(x, attention_mask=mask)
    for h in hooks:
        h.remove()
    kept = mask.reshape(-1).bool()
    with torch.no_grad():
        raw = {n: float((adapter.layers[n].form.delta_weight() @ inputs[n].reshape(-1, inputs[n].shape[-1])[kept].T)
                        .square().sum(0).mean()) for n in adapter.layers}
    total = sum(raw.values())
    for name in raw:
        assert importance[name] == pytest.approx(raw[name] / total, rel=1e-4)


def test_a_layer_whose_adapter_is_zero_has_no_importance():
    adapter = lorakit.attach(tiny_llama(), "lora", rank=4, targets=["q_proj", "v_proj"])
    with torch.no_grad():
        adapter.forms()[0].B.fill_(0.1)
    importance = output_importance(adapter, [{"input_ids": batch()}])
    assert sorted(importance.values()) == [0.0, 0.0, 0.0, pytest.approx(1.0)]


def test_selection_by_threshold_and_top_n():
    importance = {"a": 0.05, "b": 0.5, "c": 0.3, "d": 0.15}
    assert select_layers(importance, 0.8) == ["b", "c"]
    assert select_layers(importance, 0.81) == ["b", "c", "d"]
    assert select_layers(importance, 1.0) == ["b", "c", "d", "a"]
    assert select_layers(importance, top_n=1) == ["b"]
    with pytest.raises(ValueError):
        select_layers(importance, 0.0)
