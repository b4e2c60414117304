"""AdaLoRA: the SVD form, the Gaussian init, the importance-driven budget schedule."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.config import load_config
from lorakit.forms.svd import SVD
from lorakit.schedules.adalora import (
    BETA1,
    BETA2,
    STEP_KEY,
    Importance,
    add_orthogonal_gradients,
    budget,
    orthogonal_gradient,
    orthogonal_penalty,
)
from lorakit.train import train
from test_contracts import train_steps
from test_train import Crash, crash_at
from tiny import attach, batch, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 14  # 7 targets × 2 decoder layers of the tiny Llama


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def random_svd(rank=4, in_features=24, out_features=40, seed=0):
    torch.manual_seed(seed)
    form = SVD(in_features, out_features, rank=rank, alpha=8.0)
    with torch.no_grad():
        form.set_factors(torch.randn(out_features, rank), torch.randn(rank, in_features))
        form.lam.normal_()
    return form


# -- the form ---------------------------------------------------------------------------------
def test_svd_form_forward_matches_dense_delta_and_respects_the_mask():
    form = random_svd()
    form.mask[1] = False
    base = torch.nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    dense = form.scale * form.P @ torch.diag(form.lam * form.mask) @ form.Q
    torch.testing.assert_close(form.delta_weight(), dense)
    torch.testing.assert_close(form(x, base), base(x) + x @ dense.T, atol=1e-5, rtol=0)
    assert form.roles() == {"A": form.Q, "B": form.P, "other": form.lam}
    assert form.kept_rank() == 3
    form(x, base).sum().backward()
    assert form.lam.grad[1] == 0 and form.P.grad[:, 1].abs().sum() == 0  # masked: no gradient
    half = form(x.to(torch.bfloat16), base.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_set_factors_zeroes_lambda_and_the_mask_is_a_saved_buffer():
    form = random_svd()
    form.set_factors(torch.ones(40, 4), torch.ones(4, 24))
    assert torch.equal(form.lam, torch.zeros(4)) and torch.equal(form.P, torch.ones(40, 4))
    assert form.state_dict()["mask"].dtype == torch.bool and "mask" not in dict(form.named_parameters())


def test_gaussian_init_is_seeded_small_and_leaves_outputs_unchanged():
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "adalora", rank=4, targets=TARGETS)
    other = lorakit.attach(tiny_llama(), "adalora", rank=4, targets=TARGETS)
    P = torch.cat([f.P.flatten() for f in adapter.forms()])
    assert P.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(torch.equal(a.Q, b.Q) for a, b in zip(adapter.forms(), other.forms()))
    assert all(f.lam.abs().sum() == 0 and bool(f.mask.all()) for f in adapter.forms())
    torch.testing.assert_close(logits(model, x), logits(tiny_llama(), x), atol=2e-5, rtol=0)


# -- the budget -------------------------------------------------------------------------------
@pytest.mark.parametrize("t_init,t_final,total", [(0, 0, 10), (3, 4, 20), (5, 0, 6), (0, 9, 10), (7, 11, 100)])
def test_budget_is_non_increasing_and_ends_exactly_at_the_target(t_init, t_final, total):
    initial, target = 8 * 14, 3 * 14
    values = [budget(t, initial, target, t_init, t_final, total) for t in range(1, total + 5)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[:t_init] == [initial] * t_init
    assert values[total - t_final - 1:] == [target] * (t_final + 5)
    assert all(target <= v <= initial for v in values)


def test_short_run_keeps_exactly_the_target_budget_and_save_load_restores_it(tmp_path):
    x = batch()
    model = tiny_llama()
    adapter = lorakit.attach(model, "adalora", rank=4, targets=TARGETS, dropout=0.1,
                             adalora_total_steps=6, adalora_t_final=2)
    optimizer = adapter.optimizer(lr=1e-2)
    train_steps(model, adapter, batch(size=4, length=24), steps=4, optimizer=optimizer)
    masks = {name: layer.form.mask.clone() for name, layer in adapter.layers.items()}
    assert sum(int(m.sum()) for m in masks.values()) == 2 * LAYERS  # b_T = ⌈4/2⌉·n at T − t_final
    assert len({int(m.sum()) for m in masks.values()}) > 1  # the ranks differ between layers
    train_steps(model, adapter, batch(size=4, length=24), steps=3, optimizer=optimizer)  # past T too
    assert all(torch.equal(layer.form.mask, masks[name]) for name, layer in adapter.layers.items())
    assert all(f.lam[~f.mask].abs().sum() == 0 for f in adapter.forms())
    assert int(adapter.method_state[STEP_KEY]) == 7

    adapter.save(tmp_path / "adapter")
    fresh = tiny_llama()
    loaded = lorakit.load(fresh, tmp_path / "adapter")
    assert loaded.spec == adapter.spec and int(loaded.method_state[STEP_KEY]) == 7
    assert {n: int(lay.form.mask.sum()) for n, lay in loaded.layers.items()} == {
        n: int(m.sum()) for n, m in masks.items()}
    assert all(torch.equal(layer.form.mask, masks[name]) for name, layer in loaded.layers.items())
    assert torch.equal(logits(fresh, x), logits(model, x))


# -- importance -------------------------------------------------------------------------------
def test_importance_comes_from_the_gradients_seen_before_the_update():
    model = tiny_llama()
    adapter = lorakit.attach(model, "adalora", rank=4, targets=["q_proj", "v_proj"], adalora_total_steps=100)
    optimizer = adapter.optimizer(lr=1e-2)
    with torch.no_grad():
        for form in adapter.forms():
            form.lam.fill_(0.1)  # λ = 0 at attach would make every λ sensitivity 0
    model.train()
    model(batch(), labels=batch()).loss.backward()
    silent, *others = list(adapter.layers)
    adapter.layers[silent].form.lam.grad = None  # this layer's λ gets no gradient
    expected = {}
    for name in others:
        form = adapter.layers[name].form
        expected[name, "lam"] = (form.lam * form.lam.grad).abs().detach()
        orth = orthogonal_gradient(form.P, form.Q)[0]
        expected[name, "P"] = (form.P * (form.P.grad + 0.1 * orth)).abs().detach()  # the penalty's too
    optimizer.step()
    importance = adapter.schedule.importance
    assert torch.equal(importance.score(silent, "lam"), torch.zeros(4))
    for (name, factor), sensitivity in expected.items():
        smoothed = (1 - BETA1) * sensitivity
        uncertainty = (1 - BETA2) * (sensitivity - smoothed).abs()
        torch.testing.assert_close(importance.score(name, factor), smoothed * uncertainty, rtol=1e-5, atol=1e-12)
        assert importance.score(name, factor).sum() > 0
    form = adapter.layers[others[0]].form
    triplets = importance.score(others[0], "lam") + importance.score(others[0], "P").mean(0) \
        + importance.score(others[0], "Q").mean(1)
    torch.testing.assert_close(importance.triplet_scores(others[0], form), triplets)


# -- orthogonal regularisation ----------------------------------------------------------------
def test_orthogonal_gradient_equals_autograd_of_the_penalty():
    torch.manual_seed(0)
    P = torch.randn(40, 6, requires_grad=True)
    Q = torch.randn(6, 24, requires_grad=True)
    eye = torch.eye(6)
    penalty = ((P.T @ P - eye).norm() ** 2 + (Q @ Q.T - eye).norm() ** 2)
    torch.testing.assert_close(orthogonal_penalty(P, Q), penalty)
    grad_P, grad_Q = torch.autograd.grad(0.3 * penalty, (P, Q))
    ours = orthogonal_gradient(P, Q)
    torch.testing.assert_close(0.3 * ours[0], grad_P, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(0.3 * ours[1], grad_Q, rtol=1e-5, atol=1e-4)
    task_P = torch.randn(40, 6)
    P.grad, Q.grad = task_P.clone(), None
    add_orthogonal_gradients([SimpleNamespace(P=P, Q=Q)], 0.3)
    torch.testing.assert_close(P.grad, task_P + grad_P, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(Q.grad, grad_Q, rtol=1e-5, atol=1e-4)  # a missing gradient starts at zero
    frozen_Q = Q.detach().clone()
    P.grad = None
    add_orthogonal_gradients([SimpleNamespace(P=P, Q=frozen_Q)], 0.3)
    assert frozen_Q.grad is None  # frozen factors get no gradient
    torch.testing.assert_close(P.grad, grad_P, rtol=1e-5, atol=1e-4)
    stacked = orthogonal_gradient(torch.stack([P.detach(), 2 * P.detach()]), torch.stack([Q.detach(), Q.detach()]))
    torch.testing.assert_close(stacked[0][1], orthogonal_gradient(2 * P, Q)[0])
    torch.testing.assert_close(stacked[1][0], ours[1])


def test_fused_updates_equal_the_per_layer_definitions():
    """The multi-tensor paths the hooks use give what the per-entry definitions (Eq. 6, 8, 9) give."""
    model = tiny_llama()
    adapter = lorakit.attach(model, "adalora", rank=4, targets=["q_proj", "k_proj", "down_proj"],
                             adalora_total_steps=10)
    with torch.no_grad():
        for form in adapter.forms():
            form.lam.normal_()
    x = batch()
    model(x, labels=x).loss.backward()
    forms = {name: layer.form for name, layer in adapter.layers.items()}
    grads = {name: (f.P.grad.clone(), f.Q.grad.clone()) for name, f in forms.items()}
    fused = Importance()
    smoothed = {(n, k): 0.0 for n in forms for k in ("P", "lam", "Q")}
    uncertainty = dict(smoothed)
    for _ in range(2):
        fused.update_all(forms)
        for name, factor in smoothed:
            param = Importance.factors(forms[name])[factor]
            sensitivity = (param * param.grad).abs().detach()
            smoothed[name, factor] = BETA1 * smoothed[name, factor] + (1 - BETA1) * sensitivity
            uncertainty[name, factor] = BETA2 * uncertainty[name, factor] \
                + (1 - BETA2) * (sensitivity - smoothed[name, factor]).abs()
    assert set(fused.smoothed) == set(smoothed)
    for key in smoothed:
        torch.testing.assert_close(fused.smoothed[key], smoothed[key], atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(fused.uncertainty[key], uncertainty[key], atol=1e-7, rtol=1e-6)
    add_orthogonal_gradients(list(forms.values()), 0.1)
    for name, form in forms.items():
        expected_P, expected_Q = grads[name]
        dP, dQ = orthogonal_gradient(form.P, form.Q)
        torch.testing.assert_close(form.P.grad, expected_P + 0.1 * dP, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(form.Q.grad, expected_Q + 0.1 * dQ, atol=1e-6, rtol=1e-5)


def test_the_pre_step_hook_adds_the_penalty_gradient():
    model = tiny_llama()
    adapter = lorakit.attach(model, "adalora", rank=4, targets=["q_proj"], adalora_total_steps=10,
                             adalora_orth_reg=0.5)
    optimizer = adapter.optimizer(lr=0.0)
    model(batch(), labels=batch()).loss.backward()
    task = {name: (lay.form.P.grad.clone(), lay.form.Q.grad.clone()) for name, lay in adapter.layers.items()}
    optimizer.step()
    for name, layer in adapter.layers.items():
        P = layer.form.P.detach().clone().requires_grad_()
        Q = layer.form.Q.detach().clone().requires_grad_()
        grad_P, grad_Q = torch.autograd.grad(0.5 * orthogonal_penalty(P, Q), (P, Q))
        torch.testing.assert_close(layer.form.P.grad, task[name][0] + grad_P, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.form.Q.grad, task[name][1] + grad_Q, rtol=1e-5, atol=1e-6)


# -- options, validation, the training loop ----------------------------------------------------
def test_optimizer_without_total_steps_is_a_clear_error():
    adapter = lorakit.attach(tiny_llama(), "adalora", rank=4)
    with pytest.raises(lorakit.LorakitError, match="adalora_total_steps") as info:
        adapter.optimizer(lr=1e-3)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method,kwargs,needle", [
    ("lora", {"init": "gaussian"}, "init 'gaussian' draws both factors at random"),
    ("lora", {"schedule": "adalora"}, "schedule 'adalora' masks the triplets"),
    ("adalora", {"init": "kaiming"}, "init 'kaiming' does not apply"),
    ("adalora", {"schedule": "simplex_lora"}, "form 'svd' is pruned by its mask"),
    ("adalora", {"optimizer": "lora_fa"}, "optimizer 'lora_fa' cannot be combined with form 'svd'"),
    ("adalora", {"optimizer": "delta_lora", "dropout": 0.0},
     "optimizer 'delta_lora' cannot be combined with form 'svd'"),
    ("lora", {"adalora_orth_reg": 0.1}, "adalora_orth_reg has no effect with schedule 'fixed'"),
    ("adalora", {"adalora_delta_t": 0}, "adalora_delta_t must be a positive integer"),
    ("adalora", {"adalora_t_init": -1}, "adalora_t_init must be a non-negative integer"),
    ("adalora", {"adalora_total_steps": 2.5}, "adalora_total_steps must be a positive integer"),
    ("adalora", {"adalora_target_rank": 5}, "adalora_target_rank (5) must be <= rank (4)"),
    ("adalora", {"adalora_total_steps": 10, "adalora_t_init": 6, "adalora_t_final": 4},
     "must be < adalora_total_steps"),
])
def test_invalid_adalora_options_are_refused(method, kwargs, needle):
    with pytest.raises(lorakit.LorakitError) as info:
        attach(tiny_llama(), method, rank=4, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_svd_form_with_the_fixed_schedule_is_allowed():
    adapter = lorakit.attach(tiny_llama(), "adalora", rank=4, schedule="fixed")
    adapter.optimizer(lr=1e-3)  # no budget, no total steps needed


def run_config(model_dir, data, out, *extra):
    return load_config(None, [
        f"model.path={model_dir}", f"data.path={data}", "data.train_size=16", "data.eval_size=0",
        "data.max_length=48", "method.name=adalora", "method.rank=4", "train.lr=1e-2", "train.batch_size=4",
        "train.max_steps=3", "train.eval_every=null", "train.save_every=null", f"train.output_dir={out}", *extra])


def test_training_loop_fills_in_total_steps(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "run"
    config = run_config(tiny_model_dir, addition_data, out)
    assert config.method_spec().adalora_total_steps is None
    train(config, progress=False)
    saved = json.loads((out / "adapter" / "lorakit_adapter.json").read_text())
    assert saved["method"]["adalora_total_steps"] == 3
    assert sum(saved["kept_ranks"].values()) == 2 * len(saved["kept_ranks"])  # b_T
    adapter = lorakit.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    assert sum(f.kept_rank() for f in adapter.forms()) == 2 * len(adapter.layers)


@pytest.mark.parametrize("crash", [5, 3])
def test_resume_continues_the_budget_schedule(crash, tiny_model_dir, addition_data, tmp_path):
    """Masks and the step counter are saved with the adapter, the EMAs in the checkpoint: a run
    resumed after the allocation is fixed (T − t_final = 4; checkpoint at 4) or while it still
    changes (checkpoint at 2) equals the uninterrupted one and ends with exactly b_T triplets."""
    extra = ("train.max_steps=6", "train.save_every=2", "method.adalora_t_final=2")
    train(run_config(tiny_model_dir, addition_data, tmp_path / "full", *extra), progress=False)
    with pytest.raises(Crash):
        train(run_config(tiny_model_dir, addition_data, tmp_path / "cut", *extra), progress=False,
              callbacks=[crash_at(crash)])
    train(run_config(tiny_model_dir, addition_data, tmp_path / "cut", *extra), resume=True, progress=False)
    full, cut = (load_file(tmp_path / run / "adapter" / "lorakit_adapter.safetensors") for run in ("full", "cut"))
    assert full.keys() == cut.keys() and int(cut[STEP_KEY]) == 6
    assert sum(int(t.sum()) for k, t in cut.items() if k.endswith(".mask")) == 2 * len(
        [k for k in cut if k.endswith(".mask")])
    assert all(torch.equal(full[key], cut[key]) for key in full)
