"""CUDA and half-precision paths. Skipped where no CUDA device is present (CI); run on a GPU box."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.config import load_config
from lorakit.train import train
from tiny import attach, batch, full_precision_methods, tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
METHODS = full_precision_methods()
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cuda_llama(dtype: torch.dtype) -> torch.nn.Module:
    return tiny_llama().to("cuda", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_attach_on_cuda_keeps_logits_and_factors_on_device(method, dtype):
    x = batch().cuda()
    with torch.no_grad():
        reference = cuda_llama(dtype)(x).logits.float()
    model = cuda_llama(dtype)
    if method == "delta_lora" and dtype != torch.float32:  # its in-place W update needs float32
        with pytest.raises(lorakit.LorakitError, match="train with the model in float32"):
            attach(model, method, rank=4, targets=TARGETS, seed=0)
        return
    adapter = attach(model, method, rank=4, targets=TARGETS, seed=0)
    assert all(p.is_cuda for p in adapter.parameters())
    with torch.no_grad():
        got = model(x).logits.float()
    # bf16: the spectral inits round W − sBA to bf16 once; the logits move by that rounding only
    tolerance = 2e-5 if dtype == torch.float32 else 0.08
    torch.testing.assert_close(got, reference, atol=tolerance, rtol=0)


def test_randomised_pissa_on_cuda_is_seeded():
    weights = []
    for _ in range(2):
        model = cuda_llama(torch.float32)
        lorakit.attach(model, "pissa", rank=4, targets=["q_proj"], pissa_niter=4, seed=7)
        weights.append(model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_cuda_and_cpu_give_the_same_olora_factors():
    cpu = lorakit.attach(tiny_llama(), "olora", rank=4, targets=TARGETS).state_dict()
    gpu = lorakit.attach(cuda_llama(torch.float32), "olora", rank=4, targets=TARGETS).state_dict()
    assert cpu.keys() == gpu.keys()
    for key in cpu:
        # QR is unique up to the signs of Q's columns (and R's rows): compare magnitudes here
        # and the products below
        torch.testing.assert_close(gpu[key].cpu().abs(), cpu[key].abs(), atol=1e-4, rtol=1e-4, msg=key)
    for key in [k for k in cpu if k.endswith(".B")]:
        a_key = key[:-1] + "A"
        torch.testing.assert_close((gpu[key] @ gpu[a_key]).cpu(), cpu[key] @ cpu[a_key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_with_mixed_precision_on_cuda(precision, tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / precision
    config = load_config(None, [
        f"model.path={tiny_model_dir}", f"data.path={addition_data}", "data.train_size=48",
        "data.eval_size=16", "data.max_length=48", "method.name=olora_plus", "method.rank=4",
        "method.targets=all-linear", "train.lr=5e-3", "train.batch_size=4", "train.grad_accum=2",
        "train.epochs=2", "train.eval_every=4", f"train.mixed_precision={precision}",
        "eval.metrics=[eval_loss,bleu,rougeL]", "eval.max_new_tokens=8", f"train.output_dir={out}"])
    summary = train(config, progress=False)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["eval_loss"] for r in evals if "eval_loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    assert summary["eval_loss"] == pytest.approx(losses[-1])
    saved = load_file(out / "adapter" / "lorakit_adapter.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in saved.values())


# -- speed options on CUDA (the CPU tests in test_speed.py check them in float32) ------------------
def _bf16_adapted():
    model = cuda_llama(torch.bfloat16)
    adapter = lorakit.attach(model, "lora", rank=4, targets=TARGETS, seed=0)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model, adapter


def _assert_close_bf16(got, expected):
    torch.testing.assert_close(got[0], expected[0], rtol=2e-2, atol=2e-2)
    for a, b in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("option", ["sparse_logits", "fused", "compile", "padding_free_flash"])
def test_speed_options_on_cuda_in_bf16(option):
    from lorakit.data import Collator
    from lorakit.data.packing import FlatCollator
    from lorakit.evaluate.loss import LossLogits
    from test_packing import Pad, examples
    from test_speed import loss_and_grads

    model, adapter = _bf16_adapted()
    padded = Collator(Pad())(examples())
    expected = loss_and_grads(model, adapter, padded)
    logits = LossLogits(model)
    if option == "sparse_logits":
        got = loss_and_grads(model, adapter, padded, logits)
    elif option == "fused":
        adapter.fuse_shared_inputs()
        got = loss_and_grads(model, adapter, padded, logits)
    elif option == "compile":
        got = loss_and_grads(model, adapter, padded, logits, forward=torch.compile(model, dynamic=True))
    else:
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
        model.set_attn_implementation("flash_attention_2")
        got = loss_and_grads(model, adapter, FlatCollator()(examples()), logits)
    _assert_close_bf16(got, expected)


def test_liger_kernels_keep_the_loss(monkeypatch):
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install \"lorakit[kernels]\")")
    from transformers.models.llama import modeling_llama

    from lorakit.data import Collator
    from lorakit.integrations.liger import apply_liger
    from test_packing import Pad, examples
    from test_speed import loss_and_grads

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):  # liger replaces them process-wide
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    model, adapter = _bf16_adapted()
    padded = Collator(Pad())(examples())
    expected = loss_and_grads(model, adapter, padded)
    apply_liger(model)
    _assert_close_bf16(loss_and_grads(model, adapter, padded), expected)
