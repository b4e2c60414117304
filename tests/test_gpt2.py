"""GPT-2's ``Conv1D`` layers (weights stored transposed) as targets, for every preset, on a tiny GPT-2."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import lorakit
from lorakit.conv1d import Conv1D, Conv1DView
from test_contracts import METHODS, capped_lr, logits, run_options, train_and_reload, train_steps
from tiny import VOCAB, attach, batch

TARGETS = ["c_attn", "c_proj", "c_fc"]


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def options(method: str) -> dict:
    return {"targets": TARGETS, "rank": 4, **run_options(method, 4),
            **({"dropout": 0.0} if method == "delta_lora" else {})}


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_adapts_conv1d(method, tmp_path):
    x = batch()
    model = tiny_gpt2()
    before = logits(model, x)
    adapter = attach(model, method, **options(method))
    assert all(isinstance(layer.base_layer, Conv1DView) for layer in adapter.layers.values())
    assert len(adapter.layers) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    torch.testing.assert_close(logits(model, x), before, atol=1e-5, rtol=0)  # unchanged at attach
    trained, reloaded = train_and_reload(model, adapter, x, tiny_gpt2(), tmp_path / "adapter", lr=capped_lr(adapter))
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)
    merged = adapter.merge_and_unload()
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)  # the Conv1D is back, W merged into it
    torch.testing.assert_close(logits(merged, x), trained, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", ["lora", "olora", "dora", "delta_lora"])
def test_peft_loads_the_conv1d_export(method, tmp_path):
    from peft import PeftModel

    x = batch(seed=1)
    model = tiny_gpt2()
    adapter = attach(model, method, **options(method))
    train_steps(model, adapter, batch(), steps=3)
    expected = logits(model, x)
    adapter.save_peft(tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(peft_model, x), expected, atol=5e-5, rtol=0)


def test_a_schedule_removing_a_conv1d_layer_puts_the_conv1d_back():
    model = tiny_gpt2()
    adapter = lorakit.attach(model, "weight_lora", targets=TARGETS, rank=4, selection_steps=2, weight_lora_k=3)
    train_steps(model, adapter, batch(), steps=3)
    assert adapter.removed
    for name in adapter.removed:
        assert isinstance(model.get_submodule(name), Conv1D)


def test_an_eval_mode_model_stays_in_eval_mode():
    """The Conv1D view follows its layer's mode: no adapter dropout in an eval-mode model."""
    x = batch()
    model = tiny_gpt2()
    adapter = lorakit.attach(model, "pissa", targets=TARGETS, rank=4, dropout=0.5)
    assert not any(layer.training for layer in adapter.layers.values())
    torch.testing.assert_close(logits(model, x), logits(model, x), atol=0, rtol=0)
    torch.testing.assert_close(logits(model, x), logits(tiny_gpt2(), x), atol=1e-5, rtol=0)
