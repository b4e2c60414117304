"""``train_modules``: modules trained in full next to the adapter, saved and restored with it."""

from __future__ import annotations

import json

import pytest
import torch

import lorakit
from lorakit.errors import LorakitError
from test_contracts import logits, train_and_reload, train_steps
from tiny import attach, batch, tiny_llama


@pytest.mark.parametrize("method", ["lora", "olora_plus", "dora", "weight_lora"])
def test_a_trained_head_is_saved_and_restored(method, tmp_path):
    x = batch()
    model = tiny_llama()
    head = model.lm_head.weight.detach().clone()
    adapter = attach(model, method, rank=4, train_modules=["lm_head"],
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



def test_train_modules_export_as_modules_to_save(tmp_path):
    """PEFT reads the exported whole module (``modules_to_save``) and gives the adapter's logits."""
    from peft import PeftModel

    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora", rank=2, train_modules="lm_head")
    train_steps(model, adapter, x)
    adapter.save_peft(tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["lm_head"] and config["task_type"] == "CAUSAL_LM"
    peft_model = PeftModel.from_pretrained(tiny_llama(), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(peft_model, x), logits(model, x), atol=1e-5, rtol=0)
    imported = lorakit.load_peft(tiny_llama(), tmp_path / "peft")
    assert list(imported.full_modules) == ["lm_head"]
    torch.testing.assert_close(logits(imported.model, x), logits(model, x), atol=1e-5, rtol=0)


def test_a_tied_head_is_not_exported_as_modules_to_save(tmp_path):
    model = tiny_llama(tie_word_embeddings=True)
    adapter = lorakit.attach(model, "lora", rank=2, train_modules="lm_head")
    with pytest.raises(LorakitError, match="'lm_head' shares its weights with model.embed_tokens.weight"):
        adapter.save_peft(tmp_path / "peft")
