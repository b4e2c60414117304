"""GRPO in lorakit's own loop (``train.objective: grpo``): rewards, advantages, the clipped loss with
its KL to the exact original model, logging, bad input, and a resume that equals the uninterrupted run."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import load_file

from lorakit.config import load_config
from lorakit.errors import LorakitError
from lorakit.rewards import exact_number, format, last_number, short
from lorakit.train import train
from lorakit.train.checkpoint import latest_checkpoint
from lorakit.train.grpo import (
    PLAIN_SAMPLING,
    _until_eos,
    aligned,
    clipped_loss,
    end_tokens,
    group_advantages,
    token_logps,
    without_dropout,
)
from test_train import ADAPTER, Crash, crash_at, same_run_outputs
from tiny import tiny_llama

REWARDS = "train.rewards={lorakit.rewards:exact_number: 1.0, lorakit.rewards:short: 0.1}"


def grpo(model_dir, data, out, *extra, resume=False, callbacks=()):
    config = load_config(None, [
        f"model.path={model_dir}", f"data.path={data}", "data.train_size=24", "data.eval_size=4",
        "data.shuffle_seed=0", "data.max_length=48", "method.name=olora", "method.rank=4", "method.dropout=0.1",
        "train.objective=grpo", REWARDS, "train.num_generations=3", "train.max_completion_length=6",
        "train.lr=5e-3", "train.batch_size=2", "train.grad_accum=2", "train.max_steps=6", "train.log_every=1",
        "train.eval_every=3", "train.save_every=2", "eval.metrics=[eval_loss]", "train.report_to=none",
        f"train.output_dir={out}", *extra])
    return train(config, resume=resume, callbacks=callbacks, progress=False)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_built_in_rewards():
    assert last_number("so 12 + 30 = 42.") == 42 and last_number("1,200 apples") == 1200 and last_number("none") is None
    assert exact_number(["It is 42", "41", "no idea"], ["42", "42", "42"]) == [1.0, 0.0, 0.0]
    assert format(["work\nAnswer: 7", "7", ""], [None] * 3) == [1.0, 0.0, 0.0]
    assert short(["ab", ""], [None, None]) == [-0.02, 0.0]


def test_group_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    advantages = group_advantages(rewards, 3)
    assert advantages[:3].sum().abs() < 1e-6 and advantages[0] > 0 > advantages[1]
    assert torch.equal(advantages[3:], torch.zeros(3))  # a group that agrees teaches nothing
    std = torch.tensor([1.0, 0.0, 0.0]).std()
    assert advantages[0] == pytest.approx(float((1 - 1 / 3) / (std + 1e-4)))


def test_the_loss_at_the_sampling_policy_is_the_policy_gradient_and_its_kl_is_zero_at_the_reference():
    """With π_old = π_θ (one step per sample) the ratio is 1, the clip does not act, and the loss's
    gradient is −Σ_i mean_t Â_i ∇log π; with π_ref = π_θ the KL term is 0."""
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    loss, kl, clipped = clipped_loss(logps, logps.detach(), logps.detach(), advantages, mask, 0.2, 0.04)
    loss.backward()
    expected = -(advantages[:, None] * mask / mask.sum(1, keepdim=True))
    assert torch.allclose(logps.grad, expected) and float(kl) == 0.0 and float(clipped) == 0.0
    assert float(loss) == pytest.approx(float(-(advantages).sum()))
    away = logps.detach() - 0.5  # a reference that gives these tokens less probability
    _, kl, _ = clipped_loss(logps.detach(), logps.detach(), away, advantages, mask, 0.2, 0.04)
    assert float(kl) == pytest.approx(math.exp(-0.5) + 0.5 - 1)


@pytest.mark.parametrize("keeps_logits", [True, False])
def test_completion_logps_of_aligned_rows_equal_each_sequence_alone(keeps_logits, monkeypatch):
    """Prompts left-padded, completions right-padded (as generation lays them out), logits only
    for the completion columns: each completion token's log-probability is the one its sequence
    gets alone, unpadded; a model without ``logits_to_keep`` gives the same through full logits."""
    from lorakit.train import grpo as module

    model = tiny_llama()
    monkeypatch.setattr(module, "_keeps_logits", lambda m: keeps_logits)
    prompts, completions = [[5, 6, 7, 8], [9, 10], [11, 12, 13]], [[20, 21], [22, 23, 24, 2], [25]]
    rows = aligned(prompts, completions, pad_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        found = token_logps(model, rows)
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([prompt + completion])
            alone = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            expected = alone[len(prompt) - 1:, :].gather(-1, ids[0, len(prompt):, None]).squeeze(-1)
            torch.testing.assert_close(found[row, :len(completion)], expected, atol=1e-5, rtol=0)
    assert rows.completion.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_the_policy_logps_are_those_of_the_distribution_that_sampled():
    """At temperature T with the model's own generation config asking for top-k, top-p and a
    repetition penalty, the sampler draws from softmax(logits / T) alone, and ``token_logps`` at
    T gives each sampled token exactly the log-probability it was drawn with."""
    model = tiny_llama().eval()
    model.generation_config.update(top_k=3, top_p=0.5, repetition_penalty=1.5, do_sample=True)
    prompts = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=5,
                             do_sample=True, temperature=0.6, pad_token_id=0, eos_token_id=[],
                             output_scores=True, return_dict_in_generate=True, **PLAIN_SAMPLING)
        drawn = torch.stack([torch.log_softmax(score.float(), dim=-1) for score in out.scores], dim=1)
        completions = out.sequences[:, 4:]
        drawn = drawn.gather(-1, completions[..., None]).squeeze(-1)
        rows = aligned(prompts.tolist(), completions.tolist(), pad_id=0, device=torch.device("cpu"))
        torch.testing.assert_close(token_logps(model, rows, 0.6), drawn, atol=1e-5, rtol=0)
        assert not torch.allclose(token_logps(model, rows), drawn, atol=1e-3)  # untempered: another π


def test_a_completion_ends_at_the_models_end_of_turn_token():
    """The tokenizer's eos and every eos of the model's generation config end a completion."""
    model = tiny_llama()
    tokenizer = type("Tokenizer", (), {"eos_token_id": 2})()
    model.generation_config.eos_token_id = [7, 2]
    assert end_tokens(model, tokenizer) == [2, 7]
    model.generation_config.eos_token_id = None
    assert end_tokens(model, tokenizer) == [2]
    assert _until_eos([4, 7, 5, 2, 3], [2, 7]) == [4, 7] and _until_eos([4, 5], [2, 7]) == [4, 5]


def test_the_loss_passes_drop_no_units_yet_keep_training_mode():
    """``without_dropout`` gives the evaluation forward (adapter dropout 0.5 does not act) while
    the model stays in training mode, so gradient checkpointing still acts; everything is
    restored after."""
    from lorakit import attach

    model = tiny_llama(attention_dropout=0.3)
    adapter = attach(model, "lora", rank=4, dropout=0.5, targets=["q_proj", "v_proj"])
    for layer in adapter.layers.values():
        torch.nn.init.normal_(layer.form.B, std=0.5)
    attention = next(m for m in model.modules() if type(m).__name__.endswith("Attention"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.train()
    with without_dropout(model), torch.no_grad():
        assert model.training and attention.attention_dropout == 0.0
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert attention.attention_dropout == 0.3
    assert all(m.p == 0.5 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_beta_zero_never_runs_the_original_model(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    from lorakit.adapter import Adapter

    def refused(self, plus=None):
        raise AssertionError("the original model ran with grpo_beta 0")
    monkeypatch.setattr(Adapter, "original", refused)
    grpo(tiny_model_dir, addition_data, tmp_path / "run", "train.grpo_beta=0", "train.max_steps=2",
         "train.eval_every=null", "train.save_every=null")
    assert all(r["kl"] == 0.0 for r in records(tmp_path / "run") if "kl" in r)


def test_a_grpo_run_logs_its_rewards_and_starts_at_kl_zero(tiny_model_dir, addition_data, tmp_path):
    summary = grpo(tiny_model_dir, addition_data, tmp_path / "run")
    steps = [r for r in records(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("reward", "reward_std", "reward_exact_number", "reward_short", "kl", "completion_length",
                "clip_fraction"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert steps[0]["kl"] == 0.0 and any(r["kl"] > 0 for r in steps[1:])  # the reference is the exact start
    assert all(0 < r["completion_length"] <= 6 for r in steps) and all(r["clip_fraction"] == 0.0 for r in steps)
    assert {"eval_reward", "eval_reward_exact_number", "eval_reward_short", "eval_loss"} <= summary.keys()
    evals = [r for r in records(tmp_path / "run") if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]


def test_resume_after_a_crash_equals_the_uninterrupted_run(tiny_model_dir, addition_data, tmp_path):
    """Sampling is seeded from the step, so the resumed run samples, logs and ends as the full one did."""
    grpo(tiny_model_dir, addition_data, tmp_path / "full")
    with pytest.raises(Crash):
        grpo(tiny_model_dir, addition_data, tmp_path / "cut", callbacks=[crash_at(3)])
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000002"
    grpo(tiny_model_dir, addition_data, tmp_path / "cut", resume=True)
    full, cut = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    same_run_outputs(tmp_path / "full", tmp_path / "cut")


def refused(match, *args, **kwargs):
    with pytest.raises(LorakitError, match=match) as caught:
        load_config(*args, **kwargs)
    assert "\n" not in str(caught.value)


def test_bad_grpo_configs_are_one_line_errors_before_any_model_loads(tmp_path, monkeypatch):
    refused("needs train.rewards", None, ["train.objective=grpo"])
    refused("module 'no_such_module' of no_such_module:f does not import", None,
            ["train.objective=grpo", "train.rewards={no_such_module:f: 1}"])
    refused("lorakit.rewards has no function 'nope'", None,
            ["train.objective=grpo", "train.rewards={lorakit.rewards:nope: 1}"])
    refused("not an import path", None, ["train.objective=grpo", "train.rewards={exact_number: 1}"])
    refused("num_generations", None, ["train.objective=grpo", REWARDS, "train.num_generations=1"])
    refused("train.rewards are for train.objective grpo", None, [REWARDS])
    refused("data.packing and data.padding_free join sequences", None,
            ["train.objective=grpo", REWARDS, "data.packing=true"])
    refused("train.fsdp shards", None, ["train.objective=grpo", REWARDS, "train.fsdp=true"])


def test_a_reward_that_fails_mid_run_stops_it_with_its_message(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    module = tmp_path / "my_rewards.py"
    module.write_text(textwrap.dedent("""
        def nan(completions, references):
            return [float("nan")] * len(completions)

        def wrong_length(completions, references):
            return [1.0]

        def raises(completions, references):
            raise ValueError("the grader is down")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    for name, message in (("nan", "returned nan; return finite numbers"),
                          ("wrong_length", r"returned 1 scores for \d+ completions"),
                          ("raises", "raised ValueError: the grader is down")):
        with pytest.raises(LorakitError, match=message):
            grpo(tiny_model_dir, addition_data, tmp_path / name, f"train.rewards={{my_rewards:{name}: 1}}")


def test_compare_reports_the_objectives_own_metrics():
    """A GRPO comparison ranks runs by eval_reward (higher is better); a DPO one also by its loss (lower)."""
    from lorakit.evaluate.metrics import lower_is_better
    from lorakit.loading import reported_metrics

    grpo_config = load_config(None, ["train.objective=grpo", REWARDS, "eval.metrics=[eval_loss]"])
    assert reported_metrics(grpo_config) == ["eval_loss", "eval_reward"] and not lower_is_better("eval_reward")
    dpo = reported_metrics(load_config(None, ["train.objective=dpo", "eval.metrics=[eval_loss]"]))
    assert dpo == ["eval_loss", "eval_dpo_loss", "eval_reward_accuracy", "eval_reward_margin"]
    assert lower_is_better("eval_dpo_loss")


def test_records_whose_answers_the_cut_may_shorten_are_counted(tiny_model_dir, addition_data):
    """A reward reads a record's answer: where ``data.max_length`` may have cut it, a warning says so."""
    from lorakit.loading import encode, load_base, load_split

    def config(max_length: int, objective: str = "grpo"):
        extra = [REWARDS] if objective == "grpo" else []
        return load_config(None, [f"model.path={tiny_model_dir}", f"data.path={addition_data}", "data.train_size=60",
                                  "data.eval_size=4", f"data.max_length={max_length}", f"train.objective={objective}",
                                  *extra])

    tokenizer = load_base(config(48))[1]
    whole = [len(e["input_ids"]) for e in encode(config(200, "sft"), tokenizer, load_split(config(200, "sft"))).train]
    cut_at = sorted(whole)[len(whole) // 2]  # about half the records reach it
    with pytest.warns(UserWarning, match=r"of 64 records reach data.max_length=\d+, so the cut may have shortened"):
        encode(config(cut_at), tokenizer, load_split(config(cut_at)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode(config(max(whole) + 1), tokenizer, load_split(config(max(whole) + 1)))


@pytest.mark.parametrize(("objective", "what"), [("grpo", "prompts whose answers it samples"),
                                                 ("dpo", "preference pairs")])
def test_a_data_reading_init_without_supervised_batches_is_refused_before_the_model_loads(
        objective, what, tiny_model_dir, addition_data, tmp_path, monkeypatch):
    from lorakit.train import loop

    def never(*args, **kwargs):
        raise AssertionError("the model loaded")
    monkeypatch.setattr(loop, "load_base", never)
    extra = [REWARDS] if objective == "grpo" else []
    config = load_config(None, [f"model.path={tiny_model_dir}", f"data.path={addition_data}", "data.train_size=60",
                                "data.eval_size=4", "method.name=eva", f"train.objective={objective}", *extra,
                                f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(LorakitError, match=f"init 'eva' reads supervised training batches.*has {what}"):
        train(config, progress=False)
