"""The inits that read data, EVA, CorDA and LoRA-GA: the calibration phase (each layer's input
statistics or weight gradient over the run's own batches), EVA's components and rank
redistribution, CorDA's two modes, LoRA-GA's split, parity with PEFT, saving and loading without
data, training and exact resume through lorakit train, and their one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit import LorakitError
from lorakit.inits import INITS
from lorakit.inits.calibration import input_statistics, weight_gradients
from lorakit.inits.eva import principal_components
from lorakit.targeting import find_targets
from test_contracts import TARGETS, logits
from test_train import ADAPTER, Crash, crash_at, latest_checkpoint, run
from tiny import batch, tiny_llama


def low_rank_model() -> torch.nn.Module:
    """A tiny Llama whose token embeddings vary along 6 directions: its inputs have a clear spectrum."""
    model = tiny_llama()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        generator = torch.Generator().manual_seed(0)
        emb.copy_(torch.randn(emb.shape[0], 6, generator=generator) @ torch.randn(6, emb.shape[1], generator=generator)
                  + 0.01 * torch.randn(emb.shape, generator=generator))
    return model


def data(n: int = 24, pad: bool = False) -> list[dict]:
    batches = [{"input_ids": batch(seed=i, size=4, length=16)} for i in range(n)]
    if pad:
        for b in batches:
            b["attention_mask"] = torch.ones_like(b["input_ids"])
            b["attention_mask"][:, -5:] = 0
            b["labels"] = b["input_ids"].clone()
            b["labels"][:, :3] = -100
    return batches


def test_the_statistics_are_the_inputs_covariance_over_the_tokens_that_count():
    model = tiny_llama()
    targets = find_targets(model, ["q_proj"])
    batches = data(3, pad=True)
    seen = []
    handle = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    handle.remove()
    keep = [(b["attention_mask"].bool() & (b["labels"] != -100)) for b in batches]
    x = torch.cat([s[k] for s, k in zip(seen, keep)]).double()
    found = input_statistics(model, targets, batches)["model.layers.0.self_attn.q_proj"]
    assert found.count == x.shape[0] == 3 * 4 * (16 - 5 - 3)
    torch.testing.assert_close(found.covariance, torch.cov(x.T), atol=1e-9, rtol=1e-7)


def test_layers_reading_one_input_share_their_statistics():
    model = tiny_llama()
    found = input_statistics(model, find_targets(model, TARGETS), data(2))
    layer = "model.layers.0."
    assert found[layer + "self_attn.q_proj"] is found[layer + "self_attn.k_proj"] is found[layer + "self_attn.v_proj"]
    assert found[layer + "mlp.gate_proj"] is found[layer + "mlp.up_proj"]
    alone = input_statistics(model, find_targets(model, ["k_proj"]), data(2))[layer + "self_attn.k_proj"]
    assert torch.equal(alone.outer, found[layer + "self_attn.k_proj"].outer)
    assert len({id(value) for value in found.values()}) == 4 * 2  # qkv, o, gate/up, down in each layer


def test_the_calibration_holds_only_what_its_init_reads_and_float32_is_close():
    """EVA's statistics hold Σ x xᵀ alone, CorDA's the scaled sum alone (one in × in matrix each);
    ``calibration_dtype: float32`` halves them and gives nearly the float64 factors."""
    model = tiny_llama()
    targets = find_targets(model, ["q_proj"])
    plain = input_statistics(model, targets, data(2))["model.layers.0.self_attn.q_proj"]
    scaled = input_statistics(model, targets, data(2), scaled=True)["model.layers.0.self_attn.q_proj"]
    assert plain.scaled_outer is None and plain.outer.dtype == torch.float64
    assert scaled.outer is None and scaled.scaled_outer is not None
    for init in ("eva", "corda"):
        exact = lorakit.attach(tiny_llama(), init, rank=4, init_batches=4, init_data=data(4)).state_dict()
        halved = lorakit.attach(tiny_llama(), init, rank=4, init_batches=4, init_data=data(4),
                                calibration_dtype="float32").state_dict()
        assert exact.keys() == halved.keys()
        for key in exact:  # a component's sign is fixed, so the factors compare directly
            torch.testing.assert_close(halved[key], exact[key], atol=2e-3, rtol=1e-3)


def test_eva_starts_from_the_leading_components_unchanged_and_redistributes_ranks():
    model, reference = low_rank_model(), low_rank_model()
    adapter = lorakit.attach(model, "lora", init="eva", rank=4, init_data=data())
    x = batch(seed=99, size=2, length=8)
    torch.testing.assert_close(logits(model, x), logits(reference, x), atol=0, rtol=0)  # B = 0
    ranks = {name: layer.form.rank for name, layer in adapter.layers.items()}
    assert sum(ranks.values()) == 4 * (len(adapter.layers) + len(adapter.removed))  # the budget r·L
    assert max(ranks.values()) <= 8 and len(set(ranks.values())) > 1  # ρ = 2 caps, and it did redistribute
    statistics = input_statistics(reference, find_targets(reference, TARGETS), data()[:16])  # init_batches
    for name, layer in adapter.layers.items():
        components, _ = principal_components(statistics[name])
        torch.testing.assert_close(layer.form.A.detach().double(), components[:layer.form.rank], atol=1e-6, rtol=0)
        assert layer.form.scale == 16 / 4  # the configured rank's scale, whatever the layer's rank
    same = lorakit.attach(tiny_llama(), "lora", init="eva", rank=4, eva_rho=1.0, init_data=data())
    assert {layer.form.rank for layer in same.layers.values()} == {4}


def test_peft_gives_the_same_ranks_and_nearly_the_same_components():
    """q and o projections (q, k and v read one input, and PEFT breaks their ties its own way)."""
    peft = pytest.importorskip("peft")
    base = low_rank_model()
    batches = data(40)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], init_lora_weights="eva",
                             eva_config=peft.EvaConfig(rho=2.0, tau=0.999))
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    peft.initialize_lora_eva_weights(theirs, dataloader=batches, show_progress_bar=False)
    ours = lorakit.attach(copy.deepcopy(base), "lora", init="eva", rank=4, alpha=8, targets=["q_proj", "o_proj"],
                          init_data=batches, init_batches=40)
    statistics = input_statistics(base, find_targets(base, ["q_proj", "o_proj"]), batches)
    for name, layer in ours.layers.items():
        module = theirs.base_model.model.get_submodule(name)
        A = module.lora_A["default"].weight.detach().double()
        assert A.shape == layer.form.A.shape and module.scaling["default"] == layer.form.scale
        # PEFT's incremental PCA (stopped once its components converge) finds the leading component
        # and the data's 6-dimensional subspace; within it, close eigenvalues may mix the others
        assert abs(A[0] @ layer.form.A.detach().double()[0]) > 0.99
        leading, _ = principal_components(statistics[name])
        assert (A @ leading[:6].T).norm(dim=1).min() > 0.99


def test_an_eva_adapter_saves_and_loads_without_data(tmp_path):
    model = low_rank_model()
    adapter = lorakit.attach(model, "lora", init="eva", rank=4, init_data=data())
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.form.B.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    adapter.save(tmp_path / "a")
    again = low_rank_model()
    loaded = lorakit.load(again, tmp_path / "a")
    assert {n: la.form.rank for n, la in loaded.layers.items()} == {n: la.form.rank for n, la in adapter.layers.items()}
    x = batch(seed=5, size=2, length=8)
    torch.testing.assert_close(logits(again, x), logits(model, x), atol=0, rtol=0)


def test_bad_input_is_one_line():
    for init in DATA_INITS:
        with pytest.raises(LorakitError, match=f"init '{init}' reads the training data before step 0; pass init_data="):
            lorakit.attach(tiny_llama(), "lora", init=init)
    with pytest.raises(LorakitError, match="needs init_batches = 16 batches but the data gives 3"):
        lorakit.attach(tiny_llama(), "lora", init="eva", init_data=data(3))
    with pytest.raises(LorakitError, match="schedule 'weight_lora' changes ranks too"):
        lorakit.attach(tiny_llama(), "weight_lora", init="eva", init_data=data())
    with pytest.raises(LorakitError, match="eva_rho must be"):
        lorakit.attach(tiny_llama(), "lora", init="eva", eva_rho=0.5, init_data=data())
    with pytest.raises(LorakitError, match="init_batches=4 has no effect with init 'kaiming'"):
        lorakit.attach(tiny_llama(), "lora", init_batches=4)
    for init in DATA_INITS:  # the factors alone, without the calibration phase
        with pytest.raises(LorakitError, match=f"init '{init}' reads a few training batches before step 0"):
            INITS.get(init).factors(torch.randn(8, 8), 2, 1.0, torch.Generator(), {"corda_mode": "ipm"})
    with pytest.raises(LorakitError, match="needs batches with labels"):
        lorakit.attach(tiny_llama(), "lora_ga", init_data=data())
    with pytest.raises(LorakitError, match="lora_ga takes 2·rank = 64 singular vectors of a .*; use rank <= "):
        lorakit.attach(tiny_llama(), "lora_ga", rank=32, init_data=labelled(), init_batches=4)


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_gives_peft_factors_and_keeps_the_model_at_attach(mode):
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    base, batches = tiny_llama(), data(2)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], init_lora_weights="corda",
                             corda_config=CordaConfig(corda_method=mode))
    theirs = copy.deepcopy(base)
    preprocess_corda(theirs, config, run_model=lambda: [theirs(input_ids=row[None]) for b in batches
                                                        for row in b["input_ids"]])  # one sequence per call
    theirs = peft.get_peft_model(theirs, config)
    model = copy.deepcopy(base)
    ours = lorakit.attach(model, "lora", init="corda", corda_mode=mode, rank=4, alpha=8,
                          targets=["q_proj", "o_proj"], init_data=batches, init_batches=2)
    x = batch(seed=7, size=2, length=8)
    torch.testing.assert_close(logits(model, x), logits(base, x), atol=2e-5, rtol=0)
    for name, layer in ours.layers.items():
        module = theirs.base_model.model.get_submodule(name)
        B, A = module.lora_B["default"].weight.detach(), module.lora_A["default"].weight.detach()
        sign = torch.sign((B * layer.form.B.detach()).sum(0))  # each singular pair up to its sign
        assert (layer.form.B.detach() * sign - B).norm() < 1e-3 * B.norm()  # float32 in PEFT, float64 here
        assert (layer.form.A.detach() * sign[:, None] - A).norm() < 1e-3 * A.norm()
        torch.testing.assert_close(layer.base_layer.weight, module.base_layer.weight, atol=1e-4, rtol=0)


def test_corda_modes_split_the_data_weighted_spectrum_at_opposite_ends():
    model = tiny_llama()
    ipm = lorakit.attach(copy.deepcopy(model), "lora", init="corda", rank=4, init_data=data(), targets=["q_proj"])
    kpm = lorakit.attach(copy.deepcopy(model), "lora", init="corda", corda_mode="kpm", rank=4, init_data=data(),
                         targets=["q_proj"])
    for name in ipm.layers:
        large, small = (torch.linalg.svdvals(a.layers[name].form.B.detach() @ a.layers[name].form.A.detach())[:4]
                        for a in (ipm, kpm))
        assert large.min() > small.max()  # the most used directions of W against the least used


def labelled(n: int = 4) -> list[dict]:
    return [{**b, "labels": b["input_ids"]} for b in data(n)]


def test_the_gradient_statistic_is_the_mean_gradient_of_the_loss():
    model, batches = tiny_llama(), labelled(3)
    weights = [model.model.layers[1].self_attn.v_proj.weight]
    expected = sum(torch.autograd.grad(model(**b).loss, weights)[0] for b in batches) / 3
    found = weight_gradients(model, find_targets(model, ["v_proj"]), batches)["model.layers.1.self_attn.v_proj"]
    torch.testing.assert_close(found, expected, atol=1e-7, rtol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # every flag restored


def test_lora_ga_splits_the_gradient_as_the_paper_and_keeps_the_model_at_attach():
    model, reference, batches = low_rank_model(), low_rank_model(), labelled()
    adapter = lorakit.attach(model, "lora_ga", rank=4, init_data=batches, init_batches=4)
    x = batch(seed=7, size=2, length=8)
    torch.testing.assert_close(logits(model, x), logits(reference, x), atol=2e-5, rtol=0)
    grads = weight_gradients(reference, find_targets(reference, ["q_proj", "k_proj", "v_proj", "o_proj"]), batches)
    for name, layer in adapter.layers.items():
        U, _, Vh = torch.linalg.svd(grads[name].double(), full_matrices=False)
        c = layer.base_layer.weight.shape[0] ** 0.25 / 16 ** 0.5
        torch.testing.assert_close(layer.form.A.detach().double(), Vh[:4] * c, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.form.B.detach().double(), U[:, 4:8] * c, atol=1e-5, rtol=0)


def test_peft_lora_ga_takes_the_same_directions():
    """PEFT 0.21 scales B by the singular values and A not at all (the paper scales both by
    m^¼/√γ): the rows of A and the columns of B point the same ways."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.config import LoraGAConfig
    from peft.tuners.lora.loraga import preprocess_loraga

    base, batches = low_rank_model(), labelled()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], init_lora_weights="lora_ga",
                             lora_ga_config=LoraGAConfig())
    theirs = copy.deepcopy(base)
    theirs.eval()

    def train_step():
        for b in batches:
            (theirs(**b).loss / len(batches)).backward()

    torch.manual_seed(0)
    preprocess_loraga(theirs, config, train_step)
    theirs = peft.get_peft_model(theirs, config)
    ours = lorakit.attach(copy.deepcopy(base), "lora_ga", rank=2, alpha=4, targets=["q_proj", "o_proj"],
                          init_data=batches, init_batches=4)
    unit = torch.nn.functional.normalize
    for name, layer in ours.layers.items():
        module = theirs.base_model.model.get_submodule(name)
        A, B = module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()
        assert ((unit(A, dim=1) * unit(layer.form.A.detach(), dim=1)).sum(1).abs() > 0.99).all()
        assert ((unit(B, dim=0) * unit(layer.form.B.detach(), dim=0)).sum(0).abs() > 0.99).all()


DATA_INITS = {"eva": ("method.init=eva",), "corda": ("method.init=corda", "method.corda_mode=kpm"),
              "lora_ga": ("method.init=lora_ga", "method.rank=2")}


@pytest.mark.parametrize("init", list(DATA_INITS))
def test_lorakit_train_calibrates_on_its_own_batches_and_resumes_exactly(init, tiny_model_dir, addition_data,
                                                                           tmp_path):
    RUN = ("method.name=lora", *DATA_INITS[init], "method.init_batches=4", "method.lr_ratio=null")
    run(tiny_model_dir, addition_data, tmp_path / "full", *RUN)
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", *RUN, callbacks=[crash_at(5)])
    assert latest_checkpoint(tmp_path / "cut") is not None
    run(tiny_model_dir, addition_data, tmp_path / "cut", *RUN, resume=True)
    full, cut = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = lorakit.load(base, tmp_path / "full" / "adapter")  # no data needed
    assert loaded.spec.init == init and loaded.spec.init_batches == 4
    with pytest.raises(LorakitError, match="needs init_batches = 500 batches but the data gives 12"):
        run(tiny_model_dir, addition_data, tmp_path / "big", "method.name=lora", *DATA_INITS[init],
            "method.init_batches=500", "method.lr_ratio=null")
