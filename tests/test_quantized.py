"""Quantized bases (bitsandbytes NF4 and int8 on the CPU): every preset the combination allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.errors import LorakitError
from test_contracts import METHODS, capped_lr, logits, run_options, train_and_reload, train_steps
from tiny import attach, batch, tiny_llama

bnb = pytest.importorskip("bitsandbytes", reason="quantized bases need the optional extra lorakit[qlora]")

from lorakit.quantized import bitsandbytes_config, dequantized, is_quantized, prepare, quantize_model  # noqa: E402

KINDS = ("nf4", "int8")
# Delta-LoRA writes W, LoRA-GA needs W's gradient: both refused (tested below)
ON_QUANTIZED = [m for m in METHODS if m not in ("delta_lora", "lora_ga")]
# bitsandbytes' CPU NF4 kernel wants in_features a multiple of its block size (64)
SHAPE = {"intermediate_size": 128}


def quantized_llama(kind: str, seed: int = 0):
    """The tiny Llama with every linear layer but the head quantized, as load_model(quantize=kind) does."""
    model = quantize_model(tiny_llama(seed, **SHAPE), kind, torch.float32)
    for name, module in model.named_modules():
        if is_quantized(module):
            prepare(module, name)
    return model.eval()


def test_in_place_quantization_gives_the_bits_of_bitsandbytes_config_loading(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_llama(**SHAPE).save_pretrained(tmp_path)
    for kind in KINDS:
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=bitsandbytes_config(
            kind, torch.float32), device_map="cpu")
        ours = quantized_llama(kind)
        for (name, a), b in zip(loaded.named_modules(), ours.modules()):
            if is_quantized(a):
                assert torch.equal(a.weight.data, b.weight.data) and torch.equal(dequantized(a), dequantized(b)), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ON_QUANTIZED)
def test_every_preset_on_a_quantized_base(method, kind, tmp_path):
    x = batch()
    model = quantized_llama(kind)
    before = logits(model, x)
    adapter = attach(model, method, rank=4, **run_options(method, 4))
    spectral = adapter.spectral
    attached = logits(model, x)
    # unchanged at attach: a spectral init's residual is a frozen path by default (correction), exact to float rounding
    tolerance = 1e-4 if spectral else 1e-5
    torch.testing.assert_close(attached, before, atol=tolerance, rtol=0)
    assert adapter.quantization()["type"] == kind
    trained, reloaded = train_and_reload(model, adapter, x, quantized_llama(kind), tmp_path / "adapter",
                                         lr=capped_lr(adapter))
    assert torch.equal(reloaded, trained)  # exact onto a freshly quantized base
    merged = adapter.merge_and_unload()
    assert not any(is_quantized(m) for name, m in merged.named_modules() if name in adapter.layers)
    torch.testing.assert_close(logits(merged, x), trained, atol=5e-2 if kind == "int8" else 1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["olora", "pissa"])
def test_spectral_residual_correction_is_exact_and_disabled_is_the_quantized_base(method, kind, tmp_path):
    x = batch()
    model = quantized_llama(kind)
    before = logits(model, x)
    weights = {name: m.weight.data.clone() for name, m in model.named_modules() if is_quantized(m)}
    adapter = attach(model, method, rank=4, spectral_residual="correction")
    torch.testing.assert_close(logits(model, x), before, atol=1e-4, rtol=0)  # exact to float rounding
    assert all(torch.equal(m.base_layer.weight.data, weights[n]) for n, m in adapter.layers.items())  # W kept
    train_steps(model, adapter, x, steps=3)
    with adapter.disabled():
        assert torch.equal(logits(model, x), before)  # the true quantized base
    with adapter.original():
        assert torch.equal(logits(model, x), before)
    trained = logits(model, x)
    adapter.save(tmp_path / "adapter")
    fresh = quantized_llama(kind)
    lorakit.load(fresh, tmp_path / "adapter")
    assert torch.equal(logits(fresh, x), trained)


def test_requantized_residual_reloads_bit_for_bit(tmp_path):
    model = quantized_llama("nf4")
    adapter = lorakit.attach(model, "olora", rank=4)  # requantize (the default)
    train_steps(model, adapter, batch(), steps=2)
    adapter.save(tmp_path / "adapter")
    fresh = quantized_llama("nf4")
    loaded = lorakit.load(fresh, tmp_path / "adapter")
    for name, layer in adapter.layers.items():
        assert torch.equal(layer.base_layer.weight.data, loaded.layers[name].base_layer.weight.data), name


def test_refusals_are_one_line_errors(tmp_path):
    with pytest.raises(LorakitError, match="delta_lora writes the base weights .* is quantized"):
        lorakit.attach(quantized_llama("nf4"), "delta_lora", rank=4)
    with pytest.raises(LorakitError, match="is quantized, and a gradient-based init needs the gradient of a full"):
        attach(quantized_llama("nf4"), "lora_ga", rank=4)
    with pytest.raises(LorakitError, match="spectral residual kept as a path"):
        lorakit.attach(quantized_llama("nf4"), "dora", init="olora", rank=4, spectral_residual="correction")
    adapter = lorakit.attach(quantized_llama("nf4"), "lora", rank=4)
    adapter.save(tmp_path / "nf4")
    for other, needle in [(quantized_llama("int8"), "trained on a nf4 base .* the model is a int8 base"),
                          (tiny_llama(**SHAPE), "trained on a nf4 base .* the model is a full-precision base")]:
        with pytest.raises(LorakitError, match=needle) as info:
            lorakit.load(other, tmp_path / "nf4")
        assert "\n" not in str(info.value)
    full = lorakit.attach(tiny_llama(**SHAPE), "lora", rank=4)
    full.save(tmp_path / "full")
    with pytest.raises(LorakitError, match="trained on a full-precision base"):
        lorakit.load(quantized_llama("nf4"), tmp_path / "full")


@pytest.mark.parametrize("method,mode,tolerance", [
    ("lora", None, 1e-4), ("dora", None, 1e-4), ("lora_plus", None, 1e-4),
    ("olora", "correction", 1e-4), ("olora", "requantize", 0.3),  # measured: 6e-7, 0.13
])
def test_peft_loads_the_export_onto_the_quantized_base(method, mode, tolerance, tmp_path):
    """PEFT's LoRA on the same NF4 base computes the adapted model: to float rounding, also with a
    spectral residual kept as a path; with a requantized residual, to the difference of quantizing
    W and W − s·B₀A₀."""
    from peft import PeftModel

    x = batch(seed=1)
    model = quantized_llama("nf4")
    adapter = attach(model, method, rank=4, **({"spectral_residual": mode} if mode else {}))
    train_steps(model, adapter, batch(), steps=3)
    expected = logits(model, x)
    adapter.save_peft(tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(quantized_llama("nf4"), tmp_path / "peft").eval()
    got = logits(peft_model, x)
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=0)


def test_train_merge_and_export_a_qlora_run(quantizable_model_dir, addition_data, tmp_path, capsys):
    """lorakit train with model.quantize nf4; merge writes a plain float model (it says so) equal to the
    adapted one; export is loaded by PEFT onto the same NF4 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.cli import main
    from lorakit.loading import load_adapter_on_base

    out = tmp_path / "run"
    config = Path(__file__).parents[1] / "configs" / "qlora_smollm2.yaml"
    assert main(["train", str(config), f"model.path={quantizable_model_dir}",
                 f"data.path={addition_data}", "data.template=alpaca", "data.train_size=16", "data.eval_size=4",
                 "train.max_steps=3", "train.eval_every=null", "train.save_every=null", "eval.metrics=[eval_loss]",
                 "method.spectral_residual=correction", f"train.output_dir={out}", "--quiet"]) == 0
    adapter, _ = load_adapter_on_base(out / "adapter")  # its base quantized again, as recorded
    assert adapter.quantization()["type"] == "nf4"
    x = batch(seed=2)
    expected = logits(adapter.model, x)
    assert main(["merge", str(out / "adapter"), str(tmp_path / "merged")]) == 0
    assert "the nf4 base was dequantized and merged in float32" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any(is_quantized(m) for m in merged.modules())
    torch.testing.assert_close(logits(merged, x), expected, atol=1e-4, rtol=0)
    assert main(["export", str(out / "adapter"), str(tmp_path / "peft")]) == 0
    base = AutoModelForCausalLM.from_pretrained(quantizable_model_dir, quantization_config=bitsandbytes_config(
        "nf4", torch.float32), device_map="cpu")
    for name, module in base.named_modules():
        if is_quantized(module):
            prepare(module, name)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(logits(peft_model, x), expected, atol=1e-4, rtol=0)


def test_rank_schedules_see_the_layer_shape_not_the_packed_weight():
    """A 4-bit weight is stored packed ``(out·in/2, 1)``: SimplexLoRA still grows layers past rank 1, and
    LoRA-drop shares adapters only between layers of one shape (gate/up vs down)."""
    x = batch(size=4, length=24)
    model = quantized_llama("nf4")
    adapter = lorakit.attach(model, "simplex_lora", rank=4, simplex_every=1, simplex_reallocations=2)
    train_steps(model, adapter, x, steps=3, lr=5e-2)
    assert max(layer.form.rank for layer in adapter.layers.values()) > 1
    assert all(min(shape) >= 32 for shape in adapter.config()["targets"].values())  # (out, in), not packed
    model = quantized_llama("nf4")
    adapter = lorakit.attach(model, "lora_drop", rank=4, targets="all-linear", drop_warmup_steps=1, drop_top_n=2)
    train_steps(model, adapter, x, steps=3)  # forwards through shared adapters of the right shape


def test_lorakit_trainer_trains_a_bitsandbytes_loaded_base(tmp_path):
    from transformers import AutoModelForCausalLM

    from lorakit.integrations.transformers import LorakitTrainer
    from test_trainer import Patterns, arguments

    tiny_llama(**SHAPE).save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", device_map="cpu",
                                                 quantization_config=bitsandbytes_config("nf4", torch.float32))
    adapter = lorakit.attach(model, "lora_plus", rank=4)
    trainer = LorakitTrainer(model=model, adapter=adapter, args=arguments(tmp_path / "out", max_steps=3),
                             train_dataset=Patterns())
    trainer.train()
    assert trainer.state.global_step == 3 and not model._hf_peft_config_loaded


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["lora", "olora", "dora"])
def test_a_quantized_gpt2(method, kind, tmp_path):
    """transformers quantizes GPT-2's Conv1D layers as linear ones (``source_cls`` Conv1D): they adapt,
    reload bit for bit, and merge back into float Conv1D layers, saved as a loadable GPT-2."""
    from transformers import AutoModelForCausalLM

    from lorakit.conv1d import Conv1D
    from lorakit.quantized import dequantize_model
    from test_gpt2 import TARGETS as GPT2_TARGETS
    from test_gpt2 import tiny_gpt2

    tiny_gpt2().save_pretrained(tmp_path / "base")

    def load():
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", device_map="cpu",
                                                     quantization_config=bitsandbytes_config(kind, torch.float32))
        for name, module in model.named_modules():
            if is_quantized(module):
                prepare(module, name)
        return model.eval()

    x = batch()
    model = load()
    before = logits(model, x)
    adapter = attach(model, method, targets=GPT2_TARGETS, rank=4, **(
        {"spectral_residual": "correction"} if method == "olora" else {}))
    torch.testing.assert_close(logits(model, x), before, atol=1e-4, rtol=0)
    trained, reloaded = train_and_reload(model, adapter, x, load(), tmp_path / "adapter", steps=3)
    assert torch.equal(reloaded, trained)
    merged = adapter.merge_and_unload()
    dequantize_model(merged)
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, x), trained, atol=5e-2 if kind == "int8" else 1e-4, rtol=0)
