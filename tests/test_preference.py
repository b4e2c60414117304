"""Preference tuning: preference records, DPO against ``adapter.original()``, and the training loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lorakit
from lorakit.config import dump_config, load_config
from lorakit.data import load_records
from lorakit.data.encode import IGNORE_INDEX
from lorakit.errors import LorakitError
from lorakit.train import train
from lorakit.train.objectives import Dpo
from test_contracts import METHODS, run_options, train_steps
from tiny import VOCAB, attach, batch, tiny_llama

PROMPT = [{"role": "user", "content": "hi"}]


def pair_batch(pairs: int = 3, prompt: int = 6, answer: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """``2·pairs`` rows sharing prompts, answers differing: chosen rows first, labels on the answers."""
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, VOCAB, (pairs, prompt), generator=generator).repeat(2, 1)
    answers = torch.randint(3, VOCAB, (2 * pairs, answer), generator=generator)
    input_ids = torch.cat([prompts, answers], dim=1)
    labels = input_ids.clone()
    labels[:, :prompt] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


@pytest.mark.parametrize("method", METHODS)
def test_dpo_loss_is_log_2_at_step_0_for_every_preset(method):
    model = tiny_llama()
    adapter = attach(model, method, rank=4, **run_options(method, 5))
    pairs = pair_batch()
    objective = Dpo(adapter, beta=0.5)
    loss = float(objective.loss_sum(model, pairs).detach()) / objective.units(pairs)
    assert loss == pytest.approx(math.log(2), abs=1e-6)
    if adapter.spectral:  # the residual model is not the reference: the test above can fail
        adapter.original = adapter.disabled
        assert abs(float(objective.loss_sum(model, pairs).detach()) / 3 - math.log(2)) > 1e-3


@pytest.mark.parametrize("method", ["pissa", "delta_lora"])
def test_the_reference_stays_the_original_model_while_training(method):
    """After steps that move the factors (and W), the reference log-probabilities are still the
    original model's."""
    model = tiny_llama()
    adapter = attach(model, method, rank=4)
    train_steps(model, adapter, batch(), steps=4)
    pairs = pair_batch()
    with torch.no_grad(), adapter.original():
        moved = lorakit_logps(model, pairs)
    torch.testing.assert_close(moved, lorakit_logps(tiny_llama(), pairs), atol=1e-4, rtol=1e-5)


def lorakit_logps(model, pairs):
    from lorakit.train.objectives import sequence_logps

    with torch.no_grad():
        return sequence_logps(model, pairs)


def test_preference_formats(tmp_path):
    rows = [
        {"prompt": "hi", "chosen": "hello", "rejected": "go away"},
        {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        {"chosen": [*PROMPT, {"role": "assistant", "content": "hello"}],
         "rejected": [*PROMPT, {"role": "assistant", "content": "go away"}]},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    text, explicit, implicit = load_records(str(path))
    assert text == {"chosen": {"prompt": "hi", "completion": "hello"},
                    "rejected": {"prompt": "hi", "completion": "go away"}}
    assert explicit == implicit
    assert explicit["rejected"]["messages"][-1] == {"role": "assistant", "content": "go away"}


@pytest.mark.parametrize("row,needle", [
    ({"prompt": "hi", "chosen": "hello", "rejected": ""}, "empty 'rejected' answer"),
    ({"chosen": "hello", "rejected": "bye"}, "no text 'prompt'"),
    ({"chosen": [*PROMPT, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "differ before their last assistant turn"),
    ({"prompt": PROMPT, "chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
      "rejected": "b"}, "non-assistant turn"),
    ({"chosen": [*PROMPT], "rejected": [*PROMPT]}, "no assistant turn"),
])
def test_bad_preference_records_are_one_line_errors(row, needle, tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([row]))
    with pytest.raises(LorakitError, match=needle) as info:
        load_records(str(path), format="preference")
    assert "\n" not in str(info.value) and "record 0" in str(info.value)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """Addition prompts: the right sum is chosen, a wrong one rejected."""
    rows = [{"prompt": f"Add {a} and {b}.", "chosen": f"{a} plus {b} is {a + b}.",
             "rejected": f"{a} plus {b} is {a + b + 3}."} for a in range(8) for b in range(8)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(rows))
    return path


def dpo_config(model_dir, data, out, *extra):
    return load_config(None, [f"model.path={model_dir}", f"data.path={data}", "data.train_size=48",
                              "data.eval_size=16", "data.shuffle_seed=0", "data.max_length=48",
                              "method.name=olora", "method.rank=4", "method.targets=all-linear",
                              "train.objective=dpo", "train.dpo_beta=0.5", "train.lr=2e-2", "train.batch_size=4",
                              "train.grad_accum=2", "train.max_steps=12", "train.eval_every=6",
                              "eval.metrics=[eval_loss]", f"train.output_dir={out}", *extra])


def test_dpo_training_starts_at_log_2_and_raises_the_margin(tiny_model_dir, pairs_file, tmp_path):
    summary = train(dpo_config(tiny_model_dir, pairs_file, tmp_path / "run"), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_dpo_loss" in r]
    assert evals[0]["step"] == 0 and evals[0]["eval_dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert evals[0]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    # the margin grows step by step (on held-out pairs), and the loss falls below log 2
    assert 0 < evals[1]["eval_reward_margin"] < summary["eval_reward_margin"]
    assert summary["eval_dpo_loss"] < math.log(2) - 0.02
    assert summary["eval_reward_accuracy"] > 0.5 and "eval_loss" in summary  # NLL of the chosen answers
    model = tiny_llama_from(tiny_model_dir)
    assert lorakit.load(model, tmp_path / "run" / "adapter")
    # lorakit eval of the DPO config: the chosen answers' metrics
    from lorakit.cli import main

    config = tmp_path / "dpo.yaml"
    config.write_text(dump_config(dpo_config(tiny_model_dir, pairs_file, tmp_path / "run")))
    assert main(["eval", str(config), "--adapter", str(tmp_path / "run" / "adapter"), "--out",
                 str(tmp_path / "eval")]) == 0
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scores["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)


def tiny_llama_from(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def test_objective_and_data_must_agree(tiny_model_dir, pairs_file, addition_data, tmp_path):
    with pytest.raises(LorakitError, match="set.*objective: dpo|train.objective: dpo"):
        train(dpo_config(tiny_model_dir, pairs_file, tmp_path / "a", "train.objective=sft"), progress=False)
    with pytest.raises(LorakitError, match="needs preference records"):
        train(dpo_config(tiny_model_dir, addition_data, tmp_path / "b"), progress=False)
    with pytest.raises(LorakitError, match="packing is for sft"):
        dpo_config(tiny_model_dir, pairs_file, tmp_path / "c", "data.packing=true")


def test_generation_answers_a_pairs_prompt_and_scores_against_the_chosen_answer(tiny_model_dir, pairs_file):
    from transformers import AutoTokenizer

    from lorakit.data.encode import encode_prompt, reference

    pair = load_records(str(pairs_file))[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert encode_prompt(pair, tokenizer, "alpaca") == encode_prompt(pair["chosen"], tokenizer, "alpaca")
    assert reference(pair) == pair["chosen"]["completion"] != pair["rejected"]["completion"]
