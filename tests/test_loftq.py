"""LoftQ and ``spectral_residual: loftq``: the adapter fitted to the quantization error of the
checkpoint's full-precision weights, the base rewritten to ``Q_T``, and loading that repeats it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.errors import LorakitError
from lorakit.presets import resolve
from test_contracts import logits, train_steps
from tiny import batch, tiny_llama

pytest.importorskip("bitsandbytes", reason="quantized bases need the optional extra lorakit[qlora]")

from lorakit.inits.pissa import svd_factors  # noqa: E402
from lorakit.quantized import bitsandbytes_config, dequantized, is_quantized, prepare, quantization_roundtrip  # noqa: E402
from lorakit.source_weights import full_precision_weights  # noqa: E402

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("loftq_base")
    tiny_llama(intermediate_size=128).save_pretrained(folder)
    return folder


def quantized(folder: Path, kind: str):
    """The checkpoint loaded quantized by transformers, as ``load_model(quantize=kind)`` loads a folder."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bitsandbytes_config(kind, torch.float32),
                                                 device_map="cpu")
    for name, module in model.named_modules():
        if is_quantized(module):
            prepare(module, name)
    return model.eval()


def full_weights(model, adapter) -> dict[str, torch.Tensor]:
    return full_precision_weights(model, {name: layer.base_layer for name, layer in adapter.layers.items()})


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_one_iteration_keeps_the_base_and_fits_the_rank_r_part_of_its_error(checkpoint, kind):
    model = quantized(checkpoint, kind)
    codes = {name: m.weight.data.clone() for name, m in model.named_modules() if is_quantized(m)}
    adapter = lorakit.attach(model, "loftq", rank=4, targets=ALL)
    assert not adapter.residuals or all(B.shape[1] == 0 for B, _ in adapter.residuals.values())  # B₀A₀ = 0
    for name, W in full_weights(model, adapter).items():
        layer = adapter.layers[name]
        assert torch.equal(layer.base_layer.weight.data, codes[name])  # Q₁ = q(W): the base as loaded
        Q = dequantized(layer.base_layer)
        sB, A = (t.detach() for t in layer.form.factors())  # (s·B, A)
        best_B, best_A = svd_factors(W - Q, 4, layer.form.scale, None, None)
        torch.testing.assert_close(sB @ A, layer.form.scale * best_B @ best_A, atol=1e-5, rtol=1e-4)
        assert (W - Q - sB @ A).norm() < (W - Q).norm()  # closer to W than the base alone


def test_iterations_rewrite_the_base_reload_bit_for_bit_and_original_is_the_start(checkpoint, tmp_path):
    x = batch()
    model = quantized(checkpoint, "nf4")
    adapter = lorakit.attach(model, "loftq", rank=4, loftq_iter=3, targets=ALL)
    start = logits(model, x)
    for name, W in full_weights(model, adapter).items():  # Q₃ = q(W − s·B₂A₂), B₂A₂ saved
        layer = adapter.layers[name]
        B2, A2 = adapter.residuals[name]
        assert B2.shape == (W.shape[0], 4)
        expected = quantization_roundtrip(layer.base_layer, W - layer.form.scale * (B2 @ A2))
        assert torch.equal(dequantized(layer.base_layer), expected)
    train_steps(model, adapter, x, steps=3)
    trained = logits(model, x)
    with adapter.original():
        assert torch.equal(logits(model, x), start)  # Q_T + s·B_T A_T: the model training started from
    adapter.save(tmp_path / "adapter")
    fresh = quantized(checkpoint, "nf4")
    lorakit.load(fresh, tmp_path / "adapter")
    assert torch.equal(logits(fresh, x), trained)


@pytest.mark.parametrize("init", ["pissa", "olora", "milora"])
def test_spectral_residual_loftq_decomposes_the_full_precision_weight(checkpoint, init, tmp_path):
    x = batch()
    model = quantized(checkpoint, "nf4")
    adapter = lorakit.attach(model, init, rank=4, targets=ALL, spectral_residual="loftq")
    assert not adapter.residuals  # the pair quantized out of W is the adapter's own
    weights = full_weights(model, adapter)
    for name, W in weights.items():
        layer = adapter.layers[name]
        B0, A0 = adapter.initial[name]
        if init == "pissa":  # the SVD of the checkpoint's W, not of its dequantized codes
            best_B, best_A = svd_factors(W, 4, layer.form.scale, None, None)
            torch.testing.assert_close(B0 @ A0, best_B @ best_A, atol=1e-5, rtol=1e-4)
        expected = quantization_roundtrip(layer.base_layer, W - layer.form.scale * (B0 @ A0))
        assert torch.equal(dequantized(layer.base_layer), expected)
    train_steps(model, adapter, x, steps=2)
    trained = logits(model, x)
    adapter.save(tmp_path / "adapter")
    fresh = quantized(checkpoint, "nf4")
    lorakit.load(fresh, tmp_path / "adapter")
    assert torch.equal(logits(fresh, x), trained)


def refused(match: str, call, *args, **kwargs) -> None:
    with pytest.raises(LorakitError, match=match) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)


def test_refusals_are_one_line(checkpoint):
    from lorakit.quantized import requantize

    refused("fits the adapter to a quantized base.*model.quantize", lorakit.attach,
            tiny_llama(intermediate_size=128), "loftq", rank=4)
    gguf = quantized(checkpoint, "nf4")
    gguf.config._name_or_path = "/models/smol.Q4_K_M.gguf"
    refused("GGUF file, whose weights are already quantized", lorakit.attach, gguf, "loftq", rank=4)
    nowhere = quantized(checkpoint, "nf4")
    nowhere.config._name_or_path = ""
    refused("does not say where it was loaded from", lorakit.attach, nowhere, "pissa", rank=4,
            spectral_residual="loftq")
    changed = quantized(checkpoint, "nf4")
    layer = changed.model.layers[0].self_attn.q_proj
    requantize(layer, 2 * dequantized(layer))
    refused("'model.layers.0.self_attn.q_proj' is not the quantization of its checkpoint's weight", lorakit.attach,
            changed, "loftq", rank=4)
    refused("spectral_residual: loftq would read the checkpoint's weights too", resolve, "corda",
            spectral_residual="loftq")


def test_train_merge_and_reload_a_loftq_run(quantizable_model_dir, addition_data, tmp_path):
    """``lorakit train`` of ``lorakit example loftq`` (an NF4 base) on a local folder; the reloaded
    adapter gives the trained logits exactly, and the merged float model equals it."""
    from transformers import AutoModelForCausalLM

    from lorakit.cli import main
    from lorakit.loading import load_adapter_on_base

    out = tmp_path / "run"
    assert main(["example", "loftq", str(tmp_path / "loftq.yaml")]) == 0
    assert main(["train", str(tmp_path / "loftq.yaml"), f"model.path={quantizable_model_dir}", "method.loftq_iter=2",
                 f"data.path={addition_data}", "data.template=alpaca", "data.train_size=16",
                 "data.eval_size=4", "train.max_steps=3", "train.eval_every=null", "train.save_every=null",
                 "eval.metrics=[eval_loss]", f"train.output_dir={out}", "--quiet"]) == 0
    adapter, _ = load_adapter_on_base(out / "adapter")
    assert adapter.spec.init == "loftq" and adapter.residuals
    x = batch(seed=2)
    expected = logits(adapter.model, x)
    again, _ = load_adapter_on_base(out / "adapter")
    assert torch.equal(logits(again.model, x), expected)
    assert main(["export", str(out / "adapter"), str(tmp_path / "onto"), "--onto", "quantized"]) == 2  # Q₂ ≠ q(W)
    assert main(["merge", str(out / "adapter"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, x), expected, atol=1e-4, rtol=0)


def test_the_trainer_attaches_loftq_on_a_quantized_base_and_trains(checkpoint, tmp_path):
    """``LorakitTrainer(method="loftq")``: the adapter fitted from the checkpoint at Trainer init, then trained."""
    from lorakit.integrations.transformers import LorakitTrainer
    from test_trainer import Patterns, arguments

    model = quantized(checkpoint, "nf4").train()
    trainer = LorakitTrainer(model=model, method="loftq", method_options={"rank": 4}, args=arguments(
        tmp_path / "out", max_steps=2), train_dataset=Patterns())
    assert trainer.adapter.spec.init == "loftq" and trainer.adapter.initial
    trainer.train()
    assert trainer.state.global_step == 2


def test_one_iteration_exports_onto_the_quantized_base_as_the_plain_pair(checkpoint, tmp_path):
    """With ``T = 1`` the base is ``q(W)``, what loading the checkpoint quantized gives again, so
    ``--onto quantized`` writes ``(s·B, A)`` at rank r, and PEFT on a freshly quantized base gives
    the trained model; ``T > 1`` and a plain base are refused."""
    from peft import PeftModel

    from lorakit.io.as_lora import export_as_lora

    x = batch(seed=3)
    model = quantized(checkpoint, "nf4")
    adapter = lorakit.attach(model, "loftq", rank=4, targets=ALL)
    train_steps(model, adapter, x, steps=3)
    trained = logits(model, x)
    record = export_as_lora(adapter, tmp_path / "onto", onto="quantized")
    assert record["onto"] == "quantized" and record["rank"] == 4 and record["max_abs_logit_difference"] < 1e-4
    assert max(layer["relative_error"] for layer in record["layers"].values()) < 1e-5
    assert export_as_lora(adapter, tmp_path / "original")["rank"] == 8  # s·B A − s·B₁A₁ against W
    served = PeftModel.from_pretrained(quantized(checkpoint, "nf4"), tmp_path / "onto").eval()
    torch.testing.assert_close(logits(served, x), trained, atol=1e-4, rtol=0)
    deeper = lorakit.attach(quantized(checkpoint, "nf4"), "loftq", rank=4, loftq_iter=2, targets=ALL)
    with pytest.raises(LorakitError, match="needs each layer's base to be the checkpoint's quantization"):
        export_as_lora(deeper, tmp_path / "refused", onto="quantized")
    plain = lorakit.attach(tiny_llama(), "lora", rank=4, targets=ALL)
    with pytest.raises(LorakitError, match="needs each layer's base"):
        export_as_lora(plain, tmp_path / "refused", onto="quantized")
