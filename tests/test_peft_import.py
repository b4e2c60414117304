"""PEFT LoRA adapters imported as lorakit adapters (lorakit.load_peft, lorakit import)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model

import lorakit
from lorakit.errors import LorakitError
from test_contracts import TARGETS, logits, train_steps
from test_peft_export import SCHEDULE_CASES, trained
from tiny import batch, tiny_llama


def peft_adapter(folder, seed=0, **config):
    """A PEFT adapter on the tiny Llama with random (non-zero) B, saved to ``folder``; its logits."""
    values = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    values.update(config)
    model = get_peft_model(tiny_llama(), LoraConfig(**values))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(folder)
    return logits(model.eval(), batch(seed=1))


@pytest.mark.parametrize("config", [
    {},
    {"use_rslora": True},
    {"rank_pattern": {"down_proj": 2, "model.layers.1.self_attn.q_proj": 6},
     "alpha_pattern": {"v_proj": 3.0}},
    {"use_dora": True},
], ids=["plain", "rslora", "patterns", "dora"])
def test_a_peft_adapter_imports_with_peft_logits(config, tmp_path):
    expected = peft_adapter(tmp_path / "peft", **config)
    model = tiny_llama()
    adapter = lorakit.load_peft(model, tmp_path / "peft")
    assert adapter.spec.form == ("dora" if config.get("use_dora") else "lora")
    torch.testing.assert_close(logits(model, batch(seed=1)), expected, atol=1e-5, rtol=1e-5)
    if "rank_pattern" in config:
        ranks = {name: layer.form.rank for name, layer in adapter.layers.items()}
        assert ranks["model.layers.0.mlp.down_proj"] == 2 and ranks["model.layers.1.self_attn.q_proj"] == 6
    # saved and loaded as a lorakit adapter: the same model
    adapter.save(tmp_path / "lorakit")
    again = tiny_llama()
    lorakit.load(again, tmp_path / "lorakit")
    torch.testing.assert_close(logits(again, batch(seed=1)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["olora", "dora", "delta_lora", "weight_lora"])
def test_lorakit_export_then_import_gives_the_same_logits(method, tmp_path):
    model, adapter = trained(method, **SCHEDULE_CASES.get(method, {}))
    expected = logits(model, batch(seed=1))
    adapter.save_peft(tmp_path / "peft")
    imported = tiny_llama()
    lorakit.load_peft(imported, tmp_path / "peft")
    torch.testing.assert_close(logits(imported, batch(seed=1)), expected, atol=5e-5, rtol=0)


@pytest.mark.parametrize("method", ["lora_plus", "delta_lora", "lora_fa"])
def test_an_imported_adapter_trains_further_with_another_recipe(method, tmp_path):
    peft_adapter(tmp_path / "peft", r=4, target_modules=TARGETS)
    model = tiny_llama()
    adapter = lorakit.load_peft(model, tmp_path / "peft", method)
    assert adapter.spec.name == method
    losses = train_steps(model, adapter, batch(), steps=5, lr=1e-2)
    assert losses[-1] < losses[0]


def test_refusals_are_one_line_errors(tmp_path):
    peft_adapter(tmp_path / "peft")
    other_base = tiny_llama(hidden_size=32, intermediate_size=48)
    with pytest.raises(LorakitError, match="made for another base model") as info:
        lorakit.load_peft(other_base, tmp_path / "peft")
    assert "\n" not in str(info.value)
    with pytest.raises(LorakitError, match="'lora' form; method 'adalora' uses the 'svd' form"):
        lorakit.load_peft(tiny_llama(), tmp_path / "peft", "adalora")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for change, needle in [({"modules_to_save": ["lm_head"]}, "holds no weights of them"),
                           ({"bias": "all"}, "trains biases"),
                           ({"peft_type": "IA3"}, "peft_type is \"IA3\""),
                           ({"init_lora_weights": "pissa"}, "residual base")]:
        (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(LorakitError, match=needle):
            lorakit.load_peft(tiny_llama(), tmp_path / "peft")
    with pytest.raises(LorakitError, match="has no adapter_config.json"):
        lorakit.load_peft(tiny_llama(), tmp_path)


def test_cli_import(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "peft")
    result = subprocess.run([sys.executable, "-m", "lorakit", "import", str(tmp_path / "peft"), str(tmp_path / "out"),
                             "--model", str(tiny_model_dir), "--method", "lora_plus"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    adapter = lorakit.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out")
    assert adapter.spec.name == "lora_plus" and len(adapter.layers) == 2
    bad = subprocess.run([sys.executable, "-m", "lorakit", "import", str(tmp_path), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "has no adapter_config.json" in bad.stderr and "Traceback" not in bad.stderr


def test_a_gpt2_export_imports_back(tmp_path):
    """lorakit's own GPT-2 (Conv1D, fan_in_fan_out) export imports with the same logits."""
    from test_gpt2 import TARGETS as GPT2_TARGETS
    from test_gpt2 import tiny_gpt2

    model = tiny_gpt2()
    adapter = lorakit.attach(model, "olora", rank=4, targets=GPT2_TARGETS)
    train_steps(model, adapter, batch(), steps=3)
    adapter.save_peft(tmp_path / "peft")
    imported = tiny_gpt2()
    lorakit.load_peft(imported, tmp_path / "peft")
    torch.testing.assert_close(logits(imported, batch(seed=1)), logits(model, batch(seed=1)), atol=5e-5, rtol=0)
