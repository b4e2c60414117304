"""``train_modules``: modules trained in full next to the adapter, saved and restored with it."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.errors import LorakitError
from test_contracts import logits, train_and_reload
from tiny import batch, tiny_llama


@pytest.mark.parametrize("method", ["lora", "olora_plus", "dora", "weight_lora"])
def test_a_trained_head_is_saved_and_restored(method, tmp_path):
    x = batch()
    model = tiny_llama()
    head = model.lm_head.weight.detach().clone()
    adapter = lorakit.attach(model, method, rank=4, train_modules=["lm_head"],
                             **({"selection_steps": 2} if method == "weight_lora" else {}))
    assert model.lm_head.weight.requires_grad and "modules" in [g["name"] for g in adapter.param_groups(1e-3, 0)]
    assert adapter.num_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained, reloaded = train_and_reload(model, adapter, x, tiny_llama(), tmp_path / "adapter")
    assert not torch.equal(model.lm_head.weight, head)  # the head trained
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)
    assert adapter.config()["train_modules"] == ["lm_head"]
    merged = adapter.merge_and_unload()
    torch.testing.assert_close(logits(merged, x), trained, atol=2e-5, rtol=0)


def test_train_modules_errors(tmp_path):
    with pytest.raises(LorakitError, match="train_modules entry 'classifier' matches no module"):
        lorakit.attach(tiny_llama(), "lora", train_modules=["classifier"])
    with pytest.raises(LorakitError, match="must be a list of module-name suffixes"):
        lorakit.attach(tiny_llama(), "lora", train_modules=[3])
    adapter = lorakit.attach(tiny_llama(), "lora", rank=2, train_modules="lm_head")
    with pytest.raises(LorakitError, match="PEFT export does not write yet"):
        adapter.save_peft(tmp_path / "peft")
