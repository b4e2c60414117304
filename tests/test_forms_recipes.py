"""DoRA, VeRA, LoRA-FA and Delta-LoRA: what each one promises beyond the contract suite."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.forms.dora import DoRA
from lorakit.layer import AdaptedLinear
from lorakit.optimizers.lora_fa import gram_pseudo_inverse, project_gradient
from memory import saved_tensor_bytes
from tiny import attach, batch, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def step(model, optimizer, x) -> None:
    optimizer.zero_grad()
    model(x, labels=x).loss.backward()
    optimizer.step()


# -- DoRA ------------------------------------------------------------------------------------
def test_dora_norm_without_dense_temporary_equals_dense_norm():
    torch.manual_seed(0)
    form = DoRA(48, 80, rank=6, alpha=12.0)
    with torch.no_grad():
        form.A.normal_()
        form.B.normal_()
    weight = torch.randn(80, 48)
    dense = torch.linalg.vector_norm(weight + form.scale * form.B @ form.A, dim=1)
    torch.testing.assert_close(form.weight_norm(weight), dense, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        weight.add_(1.0)  # in place: the cached ‖W_i‖² must follow
    dense = torch.linalg.vector_norm(weight + form.scale * form.B @ form.A, dim=1)
    torch.testing.assert_close(form.weight_norm(weight), dense, atol=1e-4, rtol=1e-5)


def test_dora_forward_is_magnitude_times_direction_with_detached_norm():
    torch.manual_seed(1)
    base = torch.nn.Linear(32, 24)
    form = DoRA(32, 24, rank=4, alpha=8.0)
    with torch.no_grad():
        form.A.normal_()
        form.B.normal_()
    form.post_init(base)
    with torch.no_grad():
        form.magnitude.mul_(1.5)
    x = torch.randn(5, 32)
    adapted = base.weight + form.scale * form.B @ form.A
    norm = torch.linalg.vector_norm(adapted, dim=1).detach()
    expected = x @ ((form.magnitude / norm).unsqueeze(1) * adapted).T + base.bias
    got = form(x, base)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # backward treats the norm as a constant (paper §4.3)
    grad_out = torch.randn_like(got)
    A_grad = torch.autograd.grad(got, form.A, grad_out, retain_graph=True)[0]
    A_grad_expected = torch.autograd.grad(expected, form.A, grad_out)[0]
    torch.testing.assert_close(A_grad, A_grad_expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_dora_norm_follows_every_optimizer_step(fused):
    """The cached norm is refreshed after each step, also by a fused optimizer (which updates the
    factors without bumping their version counters): the unmerged model equals the merged one."""
    model = tiny_llama()
    adapter = lorakit.attach(model, "dora", rank=4)
    optimizer = adapter.optimizer(lr=5e-2, fused=fused)
    model.train()
    for seed in range(3):
        x = batch(seed=seed)
        model(x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    x = batch(seed=9)
    with torch.no_grad():
        unmerged = model(x).logits
        merged = adapter.merge_and_unload()(x).logits
    torch.testing.assert_close(unmerged, merged, atol=1e-5, rtol=1e-5)


def test_olora_dora_with_lora_plus_composes():
    x = batch()
    reference = tiny_llama()(x).logits
    model = tiny_llama()
    adapter = lorakit.attach(model, "dora", init="olora", optimizer="lora_plus", lr_ratio=0.5,
                             rank=4, targets=TARGETS)
    assert adapter.spec.components() == "dora × olora × lora_plus × fixed"
    torch.testing.assert_close(model(x).logits, reference, atol=2e-5, rtol=0)
    groups = {g["name"]: g for g in adapter.optimizer(lr=1e-3).param_groups}
    magnitudes = {id(form.magnitude) for form in adapter.forms()}
    assert {id(p) for p in groups["other"]["params"]} == magnitudes  # magnitudes join B's rate
    assert groups["other"]["lr"] == groups["B"]["lr"] == 5e-4


# -- VeRA ------------------------------------------------------------------------------------
def test_vera_shares_one_projection_pair_and_saves_none_of_it(tmp_path):
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "vera", targets=TARGETS, seed=5)
    assert adapter.spec.rank == 256  # the preset's default, larger than the layers here
    forms = adapter.forms()
    assert len({f.A_shared.untyped_storage().data_ptr() for f in forms}) == 1
    assert len({f.B_shared.untyped_storage().data_ptr() for f in forms}) == 1
    assert adapter.num_parameters() == sum(256 + layer.out_features for layer in adapter.layers.values())
    optimizer = adapter.optimizer(lr=5e-2)
    for _ in range(2):
        step(model, optimizer, x)
    adapter.save(tmp_path / "vera")
    saved = load_file(tmp_path / "vera" / "lorakit_adapter.safetensors")
    assert {key.rsplit(".", 1)[1] for key in saved} == {"d", "b"}
    assert all(t.numel() <= 256 for t in saved.values())
    fresh = tiny_llama()
    lorakit.load(fresh, tmp_path / "vera")
    assert torch.equal(fresh(x).logits, model(x).logits)


def test_vera_projections_depend_on_the_seed_only():
    a = lorakit.attach(tiny_llama(), "vera", rank=8, targets=["q_proj"], seed=1).forms()[0]
    b = lorakit.attach(tiny_llama(seed=4), "vera", rank=8, targets=["q_proj"], seed=1).forms()[0]
    c = lorakit.attach(tiny_llama(), "vera", rank=8, targets=["q_proj"], seed=2).forms()[0]
    assert torch.equal(a.A_shared, b.A_shared) and not torch.equal(a.A_shared, c.A_shared)


# -- LoRA-FA ---------------------------------------------------------------------------------
def test_lora_fa_never_updates_A():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora_fa", rank=4, targets=TARGETS)
    A0 = [form.A.detach().clone() for form in adapter.forms()]
    B0 = [form.B.detach().clone() for form in adapter.forms()]
    optimizer = adapter.optimizer(lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        step(model, optimizer, x)
    for form, A, B in zip(adapter.forms(), A0, B0):
        assert not form.A.requires_grad and form.A.grad is None
        assert torch.equal(form.A, A)
        assert not torch.equal(form.B, B)


def saved_activation_bytes(method: str, **overrides) -> int:
    """Bytes autograd keeps for backward in one forward pass (parameters excluded)."""
    model = tiny_llama(hidden_size=128, intermediate_size=192)
    attach(model, method, rank=4, targets=TARGETS, **overrides)
    model.train()
    x = batch(size=4, length=64)
    return saved_tensor_bytes(lambda: model(x, labels=x).loss, model.parameters())[1]


def test_lora_fa_keeps_less_for_backward_than_lora():
    lora, lora_fa = saved_activation_bytes("lora"), saved_activation_bytes("lora_fa")
    assert lora_fa < 0.9 * lora, (lora_fa, lora)


def test_projected_gradient_formula():
    torch.manual_seed(2)
    A = torch.randn(3, 10)
    B = torch.nn.Parameter(torch.zeros(7, 3))
    B.grad = torch.randn(7, 3)
    expected = B.grad @ torch.linalg.inv(A @ A.T) / 0.5**2
    project_gradient(B, gram_pseudo_inverse(A), 0.5)
    torch.testing.assert_close(B.grad, expected, atol=1e-4, rtol=1e-4)


# -- Delta-LoRA ------------------------------------------------------------------------------
def test_delta_lora_moves_W_by_exactly_ratio_times_product_change():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "delta_lora", rank=4, targets=TARGETS, delta_ratio=3.0)
    optimizer = adapter.optimizer(lr=1e-2)
    for _ in range(3):
        layers = adapter.layers.values()
        W = [layer.base_layer.weight.detach().clone() for layer in layers]
        BA = [(layer.form.B @ layer.form.A).detach().clone() for layer in layers]
        step(model, optimizer, x)
        for layer, W_t, BA_t in zip(layers, W, BA):
            expected = W_t + 3.0 * layer.form.scale * (layer.form.B @ layer.form.A - BA_t)
            torch.testing.assert_close(layer.base_layer.weight, expected.detach(), atol=1e-7, rtol=0)
    # the third step moved W (the first only moves B away from 0: B A changes from step 1 on)
    assert any((layer.base_layer.weight - tiny_llama().get_submodule(name).weight).abs().max() > 1e-4
               for name, layer in adapter.layers.items())


def test_delta_lora_waits_for_start_step():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "delta_lora", rank=4, targets=TARGETS, delta_start_step=2)
    optimizer = adapter.optimizer(lr=1e-2)
    original = {name: layer.base_layer.weight.detach().clone() for name, layer in adapter.layers.items()}
    for _ in range(2):
        step(model, optimizer, x)
    assert all(torch.equal(adapter.layers[n].base_layer.weight, w) for n, w in original.items())
    step(model, optimizer, x)
    assert any(not torch.equal(adapter.layers[n].base_layer.weight, w) for n, w in original.items())


def test_delta_lora_saved_adapter_rebuilds_the_changed_base(tmp_path):
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "delta_lora", init="olora", rank=4, targets=TARGETS, delta_start_step=1)
    optimizer = adapter.optimizer(lr=1e-2)
    for _ in range(4):
        step(model, optimizer, x)
    adapter.save(tmp_path / "delta")
    assert "changed the base weights" in lorakit.io.adapter_files.read_adapter(tmp_path / "delta")[0]["base_update"]
    fresh = tiny_llama()
    lorakit.load(fresh, tmp_path / "delta")
    for name, layer in adapter.layers.items():
        torch.testing.assert_close(fresh.get_submodule(name).base_layer.weight, layer.base_layer.weight,
                                   atol=1e-6, rtol=0)
    torch.testing.assert_close(fresh(x).logits, model(x).logits, atol=1e-5, rtol=0)


def test_delta_lora_refuses_a_half_precision_base():
    """One step's λ·s·Δ(BA) is below bf16's resolution of W: most of it would be rounded away."""
    model = tiny_llama().to(torch.bfloat16)
    with pytest.raises(lorakit.LorakitError, match="train with the model in float32"):
        lorakit.attach(model, "delta_lora", rank=4, targets=TARGETS)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())  # refused before attaching


def test_a_delta_lora_adapter_loads_onto_a_half_precision_model_but_does_not_train_there(tmp_path):
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "delta_lora", rank=4, targets=TARGETS)
    optimizer = adapter.optimizer(lr=1e-2)
    for _ in range(2):
        step(model, optimizer, x)
    adapter.save(tmp_path / "delta")
    half = lorakit.load(tiny_llama().to(torch.bfloat16), tmp_path / "delta")  # one addition: fine
    torch.testing.assert_close(half.model(x).logits.float(), model(x).logits, atol=0.1, rtol=0)
    with pytest.raises(lorakit.LorakitError, match="train with the model in float32"):
        half.optimizer(lr=1e-2)


# -- invalid combinations, refused in one place ----------------------------------------------
@pytest.mark.parametrize("method,kwargs,needle", [
    ("vera", {"init": "olora"}, "VeRA uses shared random projections"),
    ("vera", {"optimizer": "lora_fa"}, "optimizer 'lora_fa' cannot be combined with form 'vera'"),
    ("simplex_lora", {"optimizer": "lora_fa"}, "optimizer 'lora_fa' cannot be combined with schedule 'simplex_lora'"),
    ("lora_drop", {"optimizer": "delta_lora", "dropout": 0.0},
     "optimizer 'delta_lora' cannot be combined with schedule 'lora_drop'"),
    ("delta_lora", {"dropout": 0.05}, "Delta-LoRA needs adapter dropout 0"),
    ("delta_lora", {"form": "dora"}, "form 'dora' is not supported"),
    ("delta_lora", {"delta_ratio": 0.0}, "delta_ratio (Delta-LoRA λ) must be a positive finite number"),
    ("delta_lora", {"delta_ratio": float("inf")}, "delta_ratio (Delta-LoRA λ) must be a positive finite number"),
    ("vera", {"vera_d_initial": float("nan")}, "vera_d_initial must be a positive finite number"),
    ("vera", {"vera_d_initial": "x"}, "vera_d_initial must be a positive finite number, got 'x'"),
    ("simplex_lora", {"gate_lr": float("inf")}, "gate_lr must be a positive finite number"),
    ("lora", {"rslora": "yes"}, "rslora must be true or false"),
    ("pissa", {"pissa_niter": -1}, "pissa_niter must be a non-negative integer"),
    ("lora", {"delta_ratio": 2.0}, "has no effect with optimizer 'adamw'"),
    ("lora", {"vera_d_initial": 0.5}, "has no effect with form 'lora'"),
    ("lora", {"lora_fa_projected": True}, "has no effect with optimizer 'adamw'"),
    ("vera", {"rslora": True}, "VeRA has no α/r scale"),
    ("olora", {"lr_ratio_mode": "symmetric"}, "lr_ratio_mode='symmetric' has no effect with optimizer 'adamw'"),
    ("lora_plus", {"lr_ratio": float("inf")}, "must be a finite number > 0"),
    ("lora", {"alpha": "16"}, "alpha must be a finite number > 0"),
    ("lora", {"dropout": "0.1"}, "dropout must be a number in [0, 1)"),
    ("lora_drop", {"drop_top_n": 2, "drop_threshold": 0.5}, "set one of them"),
    ("weight_lora", {"selection_steps": 3, "selection_warmup": 3}, "must be smaller than selection_steps"),
    ("weight_lora", {"weight_lora_k": 99}, "weight_lora_k=99 exceeds the 8 adapted layers"),
])
def test_invalid_combinations_are_refused(method, kwargs, needle):
    with pytest.raises(lorakit.LorakitError, match=None) as error:
        attach(tiny_llama(), method, rank=4, **kwargs)
    assert needle in str(error.value)


@pytest.mark.parametrize("method", ["lora", "lora_plus", "simplex_lora"])
def test_lr_scale_scales_every_group_but_an_explicit_gate_rate(method):
    """lr_scale: the method's rate relative to the one given, for every recipe's groups; a gate_lr
    given explicitly is an absolute rate."""
    def rates(**options):
        adapter = attach(tiny_llama(), method, train_modules=["lm_head"], **options)
        return {g["name"]: g["lr"] for g in adapter.param_groups(1e-3, 0.0)}

    plain, scaled = rates(lr_scale=1.0), rates(lr_scale=4.0)  # (a preset's own lr_scale aside: SimplexLoRA's 5)
    assert set(plain) == set(scaled) and all(scaled[k] == pytest.approx(4 * plain[k]) for k in plain)
    if method == "simplex_lora":
        assert rates(lr_scale=4.0, gate_lr=0.5)["gate"] == 0.5
    with pytest.raises(lorakit.LorakitError, match="lr_scale must be a finite number > 0"):
        rates(lr_scale=0.0)
