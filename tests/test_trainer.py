"""lorakit adapters inside transformers' Trainer (lorakit.integrations.transformers)."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

import lorakit
from lorakit.errors import LorakitError
from lorakit.integrations.transformers import LorakitTrainer, OriginalModel, with_lorakit
from test_contracts import METHODS
from tiny import VOCAB, attach, tiny_llama

STEPS = 8


class Patterns(torch.utils.data.Dataset):
    """32 sequences, each repeating one of 4 short random patterns (learnable in a few steps)."""

    def __init__(self, count: int = 32, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        patterns = torch.randint(3, VOCAB, (4, 4), generator=generator)
        self.rows = patterns.repeat(count // 4, length // 4)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row}


def arguments(out, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
                  lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    values.update(overrides)
    return TrainingArguments(**values)


# schedules' decisions early enough for runs of 8-12 steps
SHORT = {"weight_lora": {"selection_steps": 4}, "weight_lora_plus": {"selection_steps": 4},
         "lora_drop": {"drop_warmup_steps": 4}, "simplex_lora": {"simplex_every": 3}}


def trainer_for(method, out, model=None, eval_dataset=None, **overrides):
    model = model or tiny_llama().train()
    adapter = attach(model, method, rank=4, **SHORT.get(method, {}))
    return LorakitTrainer(model=model, adapter=adapter, args=arguments(out, **overrides), train_dataset=Patterns(),
                          eval_dataset=eval_dataset)


def data_loss(model) -> float:
    rows = Patterns().rows
    model.eval()
    with torch.no_grad():
        loss = float(model(rows, labels=rows).loss)
    model.train()
    return loss


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_trains_in_the_trainer_with_its_own_optimizer(method, tmp_path):
    trainer = trainer_for(method, tmp_path)
    before = data_loss(trainer.model)
    result = trainer.train()
    assert data_loss(trainer.model) < before and result.global_step == STEPS
    # the adapter's optimizer: the recipe's groups (and the gate group), bound to the LR scheduler
    names = [group["name"] for group in trainer.optimizer.param_groups]
    assert names == [group["name"] for group in trainer.adapter.param_groups(1e-2, 0.0)]
    # the linear schedule drove the adapter optimizer's own groups to 0 at the last step
    assert all(group["lr"] == 0.0 for group in trainer.optimizer.optimizer.param_groups)


def test_recipes_and_schedules_act_inside_the_trainer(tmp_path):
    # LoRA+: B's group runs at λ × the Trainer's learning rate
    trainer = trainer_for("lora_plus", tmp_path / "plus", max_steps=2, lr_scheduler_type="constant")
    trainer.train()
    rates = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert rates["B"] == pytest.approx(trainer.adapter.spec.lr_ratio * rates["A"]) and rates["A"] == 1e-2
    # LoRA-FA keeps A fixed
    trainer = trainer_for("lora_fa", tmp_path / "fa")
    before = {name: layer.form.A.detach().clone() for name, layer in trainer.adapter.layers.items()}
    trainer.train()
    assert all(torch.equal(layer.form.A, before[name]) for name, layer in trainer.adapter.layers.items())
    # Delta-LoRA moves W
    trainer = trainer_for("delta_lora", tmp_path / "delta")
    name, layer = next(iter(trainer.adapter.layers.items()))
    weight = layer.base_layer.weight.detach().clone()
    trainer.train()
    assert not torch.equal(layer.base_layer.weight, weight)
    # AdaLoRA takes T from max_steps and ends at its target budget
    trainer = trainer_for("adalora", tmp_path / "ada", max_steps=20)
    trainer.train()
    spec, layers = trainer.adapter.spec, trainer.adapter.layers
    assert spec.adalora_total_steps == 20
    assert sum(lay.form.kept_rank() for lay in layers.values()) == spec.adalora_target_rank * len(layers)
    # SimplexLoRA reallocates ranks
    trainer = trainer_for("simplex_lora", tmp_path / "simplex", max_steps=12)
    trainer.train()
    ranks = {lay.form.rank for lay in trainer.adapter.layers.values()}
    assert len(ranks) > 1 or len(trainer.adapter.removed) > 0


@pytest.mark.parametrize("method", ["lora", "olora_plus", "delta_lora", "adalora", "simplex_lora", "weight_lora",
                                    "lora_drop"])
def test_resume_from_a_trainer_checkpoint_equals_the_uninterrupted_run(method, tmp_path):
    kwargs = dict(max_steps=12, save_strategy="steps", save_steps=6)
    whole = trainer_for(method, tmp_path / "whole", **kwargs)
    whole.train()
    checkpoint = tmp_path / "whole" / "checkpoint-6"
    assert (checkpoint / "lorakit_adapter.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter, not the full model
    resumed = trainer_for(method, tmp_path / "resumed", **kwargs)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = load_file(tmp_path / "whole" / "checkpoint-12" / "lorakit_adapter.safetensors")
    got = load_file(tmp_path / "resumed" / "checkpoint-12" / "lorakit_adapter.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for name, layer in whole.adapter.layers.items():  # Delta-LoRA's moved W too
        assert torch.equal(layer.base_layer.weight, resumed.adapter.layers[name].base_layer.weight)


def test_a_checkpoint_loads_with_lorakit_load(tmp_path):
    trainer = trainer_for("olora", tmp_path, save_strategy="steps", save_steps=4)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    x = Patterns()[0]["input_ids"][None]
    model = trainer.adapter.model.eval()
    with torch.no_grad():
        expected = model(x).logits
    loaded = tiny_llama()
    lorakit.load(loaded, tmp_path / "final")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected)


def test_misuse_is_a_one_line_error(tmp_path):
    model = tiny_llama()
    adapter = lorakit.attach(model, "lora", rank=2)
    cases = [
        (dict(model=model), "needs adapter="),
        (dict(model=tiny_llama(), adapter=adapter), "model= must be the model the adapter is attached to"),
        (dict(model=model, adapter=adapter, optimizers=(torch.optim.SGD(adapter.parameters(), lr=0.1), None)),
         "leave optimizers= unset"),
        (dict(model=model, adapter=adapter, method="eva"), "not both"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(LorakitError, match=needle) as info:
            LorakitTrainer(args=arguments(tmp_path), train_dataset=Patterns(), **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(LorakitError, match="transformers.Trainer subclass"):
        with_lorakit(dict)
    assert with_lorakit(Trainer) is LorakitTrainer


def test_method_attaches_from_the_trainers_own_batches(tmp_path):
    """``method=``: the Trainer attaches the adapter once it is built; a data-aware init reads the
    first ``init_batches`` batches of the Trainer's own (seeded) training dataloader."""
    trainer = LorakitTrainer(model=tiny_llama().train(), method="eva", method_options={"rank": 4, "init_batches": 3},
                             args=arguments(tmp_path), train_dataset=Patterns())
    assert trainer.adapter.spec.init == "eva" and trainer.adapter.model is trainer.model
    batches = list(itertools.islice(trainer.get_train_dataloader(), 3))  # the same seeded order again
    by_hand = lorakit.attach(tiny_llama().train(), "eva", rank=4, init_batches=3, init_data=batches)
    ours, theirs = trainer.adapter.state_dict(), by_hand.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    before = data_loss(trainer.model)
    trainer.train()
    assert data_loss(trainer.model) < before
    plain = LorakitTrainer(model=tiny_llama().train(), method="lora", method_options={"rank": 2},
                           args=arguments(tmp_path / "plain"), train_dataset=Patterns())
    assert plain.adapter.spec.name == "lora" and plain.adapter.spec.rank == 2


def test_resuming_with_another_method_is_refused(tmp_path):
    trainer_for("lora", tmp_path / "a", save_strategy="steps", save_steps=4).train()
    other = trainer_for("lora_plus", tmp_path / "b")
    with pytest.raises(LorakitError, match="other options"):
        other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))


def test_original_model_holds_no_weights():
    model = tiny_llama()
    adapter = lorakit.attach(model, "olora", rank=4)
    reference = OriginalModel(adapter)
    assert list(reference.parameters()) == [] and reference.config is model.config
    x = torch.randint(3, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(reference(x).logits, tiny_llama()(x).logits, atol=1e-5, rtol=1e-5)
    ids = reference.generate(x, max_new_tokens=3, do_sample=False)  # the original model's generation
    assert torch.equal(ids, tiny_llama().generate(x, max_new_tokens=3, do_sample=False))
    with pytest.raises(AttributeError):  # half-built: no recursion
        getattr(OriginalModel.__new__(OriginalModel), "config")  # noqa: B009


def test_load_best_model_at_end_restores_the_exact_adapter(tmp_path):
    """Delta-LoRA's best checkpoint comes back with its exact W (not W moved twice)."""
    trainer = trainer_for("delta_lora", tmp_path, max_steps=12, save_strategy="steps", save_steps=4,
                          eval_strategy="steps", eval_steps=4, load_best_model_at_end=True,
                          metric_for_best_model="loss", eval_dataset=Patterns(count=8))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    x = Patterns()[0]["input_ids"][None]
    model = trainer.adapter.model.eval()
    loaded = tiny_llama()
    lorakit.load(loaded, best)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, loaded(x).logits, atol=1e-5, rtol=1e-5)
