"""Contracts every registered method preset must keep, on a tiny random Llama."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import lorakit
from lorakit.layer import AdaptedLinear
from lorakit.presets import resolve
from tiny import attach, batch, full_precision_methods, tiny_llama

METHODS = full_precision_methods()
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def train_steps(model, adapter, x, steps=3, lr=1e-2, optimizer=None, loss_of=None):
    """``steps`` optimizer steps on the batch ``x``; ``loss_of(model, x)`` (default: the LM loss
    with ``x`` as labels). The losses, in order."""
    optimizer = optimizer or adapter.optimizer(lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = loss_of(model, x) if loss_of is not None else model(x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def capped_lr(adapter, lr=1e-2, cap=0.1):
    """``lr`` for a test's few steps on a tiny model, such that ``lr × the preset's lr_scale`` stays
    within ``cap`` (AdaLoRA's and VeRA's 25× overshoot a tiny random model at 1e-2)."""
    return lr * min(1.0, cap / (lr * adapter.spec.lr_scale))


def train_and_reload(model, adapter, x, fresh, folder, steps=4, lr=1e-2):
    """Train ``steps`` steps (the loss must fall), save, and load onto the ``fresh`` base; the trained
    and the reloaded logits."""
    losses = train_steps(model, adapter, x, steps=steps, lr=lr)
    assert losses[-1] < losses[0]
    trained = logits(model, x)
    adapter.save(folder)
    lorakit.load(fresh, folder)
    return trained, logits(fresh, x)


def run_options(method, steps):
    """Options a preset needs before it can train: AdaLoRA's budget schedule needs the run's
    number of optimizer steps (``lorakit train`` fills it in; a hand-written loop passes it)."""
    return {"adalora_total_steps": steps} if resolve(method).schedule == "adalora" else {}


def test_every_preset_is_registered():
    assert set(METHODS) >= {"lora", "lora_plus", "olora", "olora_plus", "pissa", "dora", "vera", "lora_fa",
                            "delta_lora"}


@pytest.mark.parametrize("method", METHODS)
def test_logits_unchanged_at_attach(method):
    x = batch()
    reference = logits(tiny_llama(), x)
    model = tiny_llama()
    attach(model, method, rank=4, targets=TARGETS)
    assert any(isinstance(m, AdaptedLinear) for m in model.modules())
    torch.testing.assert_close(logits(model, x), reference, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_merged_equals_unmerged(method):
    x = batch()
    model = tiny_llama()
    adapter = attach(model, method, rank=4, targets=TARGETS, **run_options(method, 3))
    train_steps(model, adapter, x)
    adapted = logits(model, x)
    assert not torch.allclose(adapted, logits(tiny_llama(), x), atol=1e-3)  # the adapter does something
    merged = adapter.merge_and_unload()
    assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    torch.testing.assert_close(logits(merged, x), adapted, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_exact(method, tmp_path):
    x = batch()
    model = tiny_llama()
    dropout = 0.0 if resolve(method).optimizer == "delta_lora" else 0.1
    adapter = attach(model, method, rank=4, targets=TARGETS, dropout=dropout, **run_options(method, 3))
    train_steps(model, adapter, x)
    adapter.save(tmp_path / "adapter")
    fresh = tiny_llama()
    loaded = lorakit.load(fresh, tmp_path / "adapter")
    assert loaded.spec == adapter.spec
    if adapter.recipe.changes_base:
        # W is rebuilt from the telescoped updates: equal to float rounding, not bit for bit
        close = functools.partial(torch.testing.assert_close, atol=1e-6, rtol=0)
    else:
        close = lambda a, b: torch.testing.assert_close(a, b, atol=0, rtol=0)  # noqa: E731
    close(logits(fresh, x), logits(model, x))
    for name, layer in loaded.layers.items():
        close(layer.base_layer.weight, adapter.layers[name].base_layer.weight)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_exactly_the_adapter(method):
    x = batch()
    model = tiny_llama()
    adapter = attach(model, method, rank=4, targets=TARGETS)
    trainable = {id(p) for p in adapter.parameters()}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for form in adapter.forms() for p in form.roles().values() if p.requires_grad}
    assert len(trainable) >= len(adapter.layers)
    model(x, labels=x).loss.backward()
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    assert with_grad == trainable
    # AdaLoRA starts from λ = 0, so at attach only λ (role "other") gets a non-zero gradient;
    # P (= B) and Q follow once λ has moved
    role = "other" if adapter.spec.form == "svd" else "B"
    assert all(form.roles()[role].grad.abs().sum() > 0 for form in adapter.forms())


@pytest.mark.parametrize("method", METHODS)
def test_short_run_lowers_loss(method):
    x = batch(size=4, length=24)
    model = tiny_llama()
    adapter = attach(model, method, rank=4, targets=TARGETS, **run_options(method, 15))
    # one rate for every preset: VeRA and AdaLoRA (whose λ starts at 0 and whose orthogonal penalty
    # dominates the early gradients) get their far higher rates from the presets' lr_scale (25)
    losses = train_steps(model, adapter, x, steps=15, lr=5e-3)
    assert losses[-1] < losses[0] - 0.05, losses


def test_spectral_init_recovers_delta_relative_to_original_base(tmp_path):
    """ΔW_total = s(BA − B₀A₀) relative to the unmodified base can be rebuilt from the save."""
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "olora", rank=4, targets=TARGETS)
    train_steps(model, adapter, x)
    adapter.save(tmp_path / "a")
    original = dict(tiny_llama().named_modules())
    tensors = lorakit.io.adapter_files.read_adapter(tmp_path / "a")[1]
    for name, layer in adapter.layers.items():
        s = layer.form.scale
        delta = s * (tensors[f"{name}.B"] @ tensors[f"{name}.A"]
                     - tensors[f"{name}.initial.B"] @ tensors[f"{name}.initial.A"])
        adapted = layer.base_layer.weight + layer.form.delta_weight()
        torch.testing.assert_close(original[name].weight + delta, adapted, atol=2e-5, rtol=0)


def test_olora_thin_qr_matches_full_qr():
    weight = torch.randn(96, 64)
    B, A = lorakit.inits.INITS.get("olora").factors(weight, 8, 1.0, torch.Generator(), {})
    Q, R = torch.linalg.qr(weight)
    torch.testing.assert_close(B, Q[:, :8], atol=1e-5, rtol=0)
    torch.testing.assert_close(A, R[:8], atol=1e-5, rtol=0)
    torch.testing.assert_close(B.T @ B, torch.eye(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("niter", [None, 4])
def test_pissa_factors_are_the_top_singular_triplets(niter):
    torch.manual_seed(0)
    weight = torch.randn(48, 8) @ torch.randn(8, 64) + 0.01 * torch.randn(48, 64)
    B, A = lorakit.inits.INITS.get("pissa").factors(weight, 8, 2.0, torch.Generator().manual_seed(0),
                                                    {"pissa_niter": niter})
    U, S, Vh = torch.linalg.svd(weight)
    best = U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]
    torch.testing.assert_close(2.0 * B @ A, best, atol=1e-3, rtol=0)


def test_milora_factors_are_the_minor_singular_triplets_and_the_base_keeps_the_principal_part():
    torch.manual_seed(0)
    weight = torch.randn(48, 64)
    B, A = lorakit.inits.INITS.get("milora").factors(weight, 8, 2.0, torch.Generator().manual_seed(0), {})
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    minor = U[:, -8:] @ torch.diag(S[-8:]) @ Vh[-8:]
    torch.testing.assert_close(2.0 * B @ A, minor, atol=1e-4, rtol=0)
    residual = torch.linalg.svdvals(weight - 2.0 * B @ A)  # the principal part, its singular values untouched
    torch.testing.assert_close(residual[:40], S[:40], atol=1e-4, rtol=0)
    assert residual[40:].max() < 1e-4


def test_override_composes_olora_plus():
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora", init="olora", optimizer="lora_plus", lr_ratio=0.5, rank=4)
    assert adapter.spec.components() == lorakit.attach(tiny_llama(), "olora_plus", rank=4).spec.components()
    groups = {g["name"]: g["lr"] for g in adapter.optimizer(lr=1e-3).param_groups}
    assert groups == {"A": 1e-3, "B": 5e-4}


def test_lr_ratio_modes():
    adapter = lorakit.attach(tiny_llama(), "olora_plus", rank=4, lr_ratio=4.0, lr_ratio_mode="symmetric")
    groups = {g["name"]: g["lr"] for g in adapter.optimizer(lr=1e-3).param_groups}
    assert groups == {"A": pytest.approx(2.5e-4), "B": pytest.approx(4e-3)}


@pytest.mark.parametrize("targets,count", [("all-linear", 14), (r".*\.0\.self_attn\.(q|v)_proj", 2), ("down_proj", 2)])
def test_targets(targets, count):
    adapter = lorakit.attach(tiny_llama(), "lora", rank=4, targets=targets)
    assert len(adapter.layers) == count
    assert "lm_head" not in adapter.layers


def test_rslora_scale():
    adapter = lorakit.attach(tiny_llama(), "lora", rank=4, alpha=8, rslora=True)
    assert next(iter(adapter.layers.values())).form.scale == pytest.approx(4.0)


def test_disabled_context_gives_base_outputs_for_kaiming():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora", rank=4)
    train_steps(model, adapter, x)
    with adapter.disabled():
        torch.testing.assert_close(logits(model, x), logits(tiny_llama(), x))
    assert not torch.allclose(logits(model, x), logits(tiny_llama(), x), atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_original_context_is_the_original_model_after_training(method):
    """``adapter.original()`` computes the model before attach for every preset, after training moved
    the factors (and, for Delta-LoRA, ``W``); ``disabled()`` differs from it for the spectral inits."""
    x = batch()
    model = tiny_llama()
    adapter = attach(model, method, rank=4, **run_options(method, 5))
    train_steps(model, adapter, x, steps=5)
    expected = logits(tiny_llama(), x)
    with adapter.original():
        torch.testing.assert_close(logits(model, x), expected, atol=1e-5, rtol=1e-5)
        with adapter.disabled():  # nesting: the inner block's own meaning, then back
            residual = logits(model, x)
        torch.testing.assert_close(logits(model, x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(model, x), expected, atol=1e-4)  # the adapter is back on
    if adapter.spectral or adapter.recipe.changes_base:
        assert not torch.allclose(residual, expected, atol=1e-4)


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "qlora"}, "unknown method 'qlora': QLoRA is a method on a quantized base: model.quantize: nf4"),
    ({"method": "OLoRA+"}, r"unknown method 'OLoRA\+' \(did you mean 'olora_plus'\?\)"),
    ({"method": "LoRA-GA"}, r"unknown method 'LoRA-GA' \(did you mean 'lora_ga'\?\)"),
    ({"method": "rsLoRA"}, "rsLoRA is LoRA with method.rslora: true"),
    ({"method": "olorra"}, r"unknown method 'olorra' \(did you mean 'olora'\?\); choose one of"),
    ({"method": "lora", "init": "svd"}, "unknown init 'svd'"),
    ({"method": "lora", "optimizer": "sgdw"}, "unknown optimizer recipe 'sgdw'"),
    ({"method": "lora", "rank": 65}, "rank 65 exceeds layer"),
    ({"method": "lora", "targets": ["qkv"]}, "match no adaptable nn.Linear"),
    ({"method": "lora", "targets": ["q_proj", "bogus"]}, "target 'bogus' of .* matches no adaptable nn.Linear"),
    ({"method": "lora", "targets": ["lm_head"]}, "LM head is never adapted"),
    ({"method": "lora", "targets": "self_attn.q_proj"}, "use a list for suffixes"),
    ({"method": "lora_plus", "lr_ratio": 0.0}, "must be a finite number > 0"),
    ({"method": "lora_plus", "lr_ratio": -2}, "must be a finite number > 0"),
    ({"method": "lora", "lr_ratio": 2.0}, "has no effect"),
    ({"method": "lora", "ranks": 4}, "unknown method option 'ranks'"),
])
def test_bad_attach_arguments(kwargs, needle):
    with pytest.raises(lorakit.LorakitError, match=needle) as info:
        lorakit.attach(tiny_llama(), **kwargs)
    assert "\n" not in str(info.value)


def test_attaching_twice_is_refused():
    model = tiny_llama()
    lorakit.attach(model, "lora", rank=4)
    with pytest.raises(lorakit.LorakitError, match="already has a lorakit adapter"):
        lorakit.attach(model, "olora", rank=4)


def test_api_misuse_gets_one_line_errors_or_the_right_result():
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora", rank=2, targets={"v_proj", "q_proj"})
    assert adapter.spec.targets == ("q_proj", "v_proj") and hash(adapter.spec)
    x = batch()
    base = logits(tiny_llama(), x)
    with torch.no_grad():
        adapter.layers[next(iter(adapter.layers))].form.B.normal_()
    adapted = logits(model, x)
    with adapter.disabled():
        with adapter.disabled():
            pass
        torch.testing.assert_close(logits(model, x), base)  # still off after the inner block
    torch.testing.assert_close(logits(model, x), adapted)
    for bad, needle in (({"lr": float("nan")}, "lr must be a finite number >= 0"),
                        ({"lr": 1e-3, "weight_decay": -1}, "weight_decay must be"),
                        ({"lr": 1e-3, "optimizer_cls": "adamw"}, "optimizer_cls must be")):
        with pytest.raises(lorakit.LorakitError, match=needle):
            adapter.optimizer(**bad)
    tensors = adapter.state_dict()
    with pytest.raises(lorakit.LorakitError, match="lack"):
        adapter.load_state_dict({k: v for k, v in tensors.items() if not k.endswith(".A")})
    with pytest.raises(lorakit.LorakitError, match="same ranks"):
        adapter.load_state_dict({k: (v[:1] if k.endswith(".A") else v) for k, v in tensors.items()})
    model.to(torch.bfloat16)
    with pytest.raises(lorakit.LorakitError, match="not float32"):
        adapter.optimizer(lr=1e-3)
    adapter.merge_and_unload()
    for use in (lambda: adapter.disabled().__enter__(), lambda: adapter.load_state_dict(tensors)):
        with pytest.raises(lorakit.LorakitError, match="merged and unloaded"):
            use()
    with pytest.raises(lorakit.LorakitError, match="targets must be"):
        lorakit.attach(tiny_llama(), "lora", targets=None)
    with pytest.raises(lorakit.LorakitError, match="did you mean 'olora_plus'"):
        lorakit.attach(tiny_llama(), "OLoRA_plus")
    with torch.device("meta"):
        meta = tiny_llama()
    with pytest.raises(lorakit.LorakitError, match="meta device"):
        lorakit.attach(meta, "lora")


def test_load_passes_its_own_errors_through(tmp_path):
    adapter = lorakit.attach(tiny_llama(), "lora", rank=2)
    adapter.save(tmp_path / "a")
    with pytest.raises(lorakit.LorakitError, match="^this adapter was trained on a different base model"):
        lorakit.load(tiny_llama(seed=5), tmp_path / "a")


def test_numpy_scalars_are_plain_numbers():
    import numpy as np

    adapter = lorakit.attach(tiny_llama(), "lora", rank=np.int64(2), alpha=np.float32(4), seed=np.int64(3))
    assert (adapter.spec.rank, adapter.spec.alpha, adapter.spec.seed) == (2, 4.0, 3)
    assert type(adapter.spec.rank) is int and json.dumps(adapter.spec.to_dict())
