"""TRL's SFTTrainer and DPOTrainer with a lorakit adapter (the optional extra lorakit[trl])."""

from __future__ import annotations

import math

import pytest

import lorakit
from lorakit.integrations.transformers import OriginalModel, with_lorakit
from test_conversations import CONVERSATION, chat_tokenizer
from tiny import attach, tiny_llama

trl = pytest.importorskip("trl", reason="TRL is the optional extra lorakit[trl]")
datasets = pytest.importorskip("datasets")

COMMON = dict(per_device_train_batch_size=4, learning_rate=1e-2, report_to="none", use_cpu=True, logging_steps=1,
              save_strategy="no", seed=0, disable_tqdm=True)
PROMPT = [{"role": "user", "content": "how are you"}]
PAIRS = [{"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "fine thanks"}],
          "rejected": [{"role": "assistant", "content": "bye"}]}] * 16


def chat_model(tok):
    return tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=tok.eos_token_id, pad_token_id=0).train()


def test_sft_trainer_on_conversations(tmp_path):
    tok = chat_tokenizer()
    model = chat_model(tok)
    adapter = lorakit.attach(model, "lora_plus", rank=4)
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=4, max_length=64, **COMMON)
    trainer = with_lorakit(trl.SFTTrainer)(model=model, adapter=adapter, args=args, processing_class=tok,
                                            train_dataset=datasets.Dataset.from_list([{"messages": CONVERSATION}] * 16))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["A", "B"]  # LoRA+'s groups
    trainer.save_model(str(tmp_path / "final"))
    assert lorakit.load(chat_model(tok), tmp_path / "final").spec.name == "lora_plus"


def dpo_trainer(method, out, steps=6):
    tok = chat_tokenizer()
    model = chat_model(tok)
    adapter = attach(model, method, rank=4)
    args = trl.DPOConfig(output_dir=str(out), max_steps=steps, beta=0.5, **COMMON)
    return with_lorakit(trl.DPOTrainer)(model=model, adapter=adapter, args=args, processing_class=tok,
                                         train_dataset=datasets.Dataset.from_list(PAIRS))


@pytest.mark.parametrize("method", ["lora", "olora", "pissa", "delta_lora"])
def test_dpo_trainer_uses_the_exact_original_model_as_reference(method, tmp_path):
    trainer = dpo_trainer(method, tmp_path)
    assert isinstance(trainer.ref_model, OriginalModel)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the policy starts as the reference
    assert logs[-1]["rewards/margins"] > logs[1]["rewards/margins"] > 0


def test_the_residual_is_not_the_reference_for_spectral_inits(tmp_path):
    """What a reference of 'adapters disabled' would give for PiSSA: not log 2 at step 0."""
    trainer = dpo_trainer("pissa", tmp_path, steps=1)
    trainer.adapter.original = trainer.adapter.disabled
    trainer.train()
    first = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert abs(first["loss"] - math.log(2)) > 1e-3


def test_a_dpo_trainer_needs_its_adapter_before_it_is_built(tmp_path):
    from lorakit.errors import LorakitError

    tok = chat_tokenizer()
    with pytest.raises(LorakitError, match="must exist first"):
        with_lorakit(trl.DPOTrainer)(model=chat_model(tok), method="eva", processing_class=tok,
                                     args=trl.DPOConfig(output_dir=str(tmp_path), **COMMON),
                                     train_dataset=datasets.Dataset.from_list(PAIRS))



def reward_short(completions, **kwargs):
    """A verifiable toy reward: shorter completions score higher."""
    return [-float(len(str(c))) for c in completions]


def grpo_trainer(method, out, steps=3, iterations=1):
    tok = chat_tokenizer()
    model = chat_model(tok)
    adapter = attach(model, method, rank=4, **({"adalora_total_steps": steps} if method == "adalora" else {}))
    args = trl.GRPOConfig(output_dir=str(out), max_steps=steps, beta=0.1, num_generations=2, max_completion_length=6,
                          num_iterations=iterations, **COMMON)
    prompts = datasets.Dataset.from_list([{"prompt": PROMPT}] * 16)
    return with_lorakit(trl.GRPOTrainer)(model=model, adapter=adapter, reward_funcs=reward_short, args=args,
                                          processing_class=tok, train_dataset=prompts)


@pytest.mark.parametrize("method", ["lora", "olora", "pissa", "delta_lora", "adalora"])
def test_grpo_trainer_keeps_its_kl_to_the_exact_original_model(method, tmp_path):
    """GRPO's reference is the adapter's original model, with no second copy loaded: at the first step
    the policy is the reference (KL exactly 0), also for the spectral inits, whose "adapters disabled"
    model is a residual; the recipe's and schedule's step hooks count optimizer steps."""
    trainer = grpo_trainer(method, tmp_path, iterations=2)
    assert isinstance(trainer.ref_model, OriginalModel) and trainer.beta == 0.1
    trainer.train()
    kls = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
    assert kls[0] == 0.0 and any(kl > 0 for kl in kls[1:])
    if method == "adalora":
        assert int(trainer.adapter.method_state["adalora.step"]) == trainer.state.global_step == 3


def test_grpo_kl_to_the_disabled_adapter_is_not_zero_for_spectral_inits(tmp_path):
    """What a reference of 'adapters disabled' would give PiSSA: a KL above 0 before any step."""
    trainer = grpo_trainer("pissa", tmp_path, steps=1)
    trainer.adapter.original = trainer.adapter.disabled
    trainer.train()
    assert next(entry["kl"] for entry in trainer.state.log_history if "kl" in entry) > 1e-4


def test_grpo_trainer_attaches_with_method(tmp_path):
    tok = chat_tokenizer()
    args = trl.GRPOConfig(output_dir=str(tmp_path), max_steps=1, beta=0.1, num_generations=2,
                          max_completion_length=4, **COMMON)
    trainer = with_lorakit(trl.GRPOTrainer)(model=chat_model(tok), method="lora", method_options={"rank": 2},
                                             reward_funcs=reward_short, args=args, processing_class=tok,
                                             train_dataset=datasets.Dataset.from_list([{"prompt": PROMPT}] * 8))
    assert isinstance(trainer.ref_model, OriginalModel) and trainer.ref_model._adapter is trainer.adapter
    trainer.train()
