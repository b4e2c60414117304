"""Packing is exact: a packed batch has the loss and gradients of the same examples unpacked."""

from __future__ import annotations

import pytest
import torch

from lorakit.data import IGNORE_INDEX, Collator
from lorakit.data.packing import PackedCollator, pack
from lorakit.evaluate.loss import label_tokens, token_loss
from tiny import attach, full_precision_methods, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Pad:
    pad_token_id, eos_token_id = 0, 2


def examples(count: int = 7, seed: int = 0) -> list[dict[str, list[int]]]:
    """Examples of different lengths, each with a prompt (no loss) and a trained answer."""
    generator = torch.Generator().manual_seed(seed)
    found = []
    for i in range(count):
        prompt, answer = 3 + (5 * i) % 7, 2 + (3 * i) % 5
        ids = torch.randint(3, 120, (prompt + answer,), generator=generator).tolist()
        found.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return found


def loss_and_grads(model, adapter, batch):
    model.zero_grad(set_to_none=True)
    loss = token_loss(model, batch)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in adapter.parameters()], label_tokens(batch["labels"])


def test_rows_hold_whole_examples_with_restarting_positions():
    rows = pack(examples(), max_length=24)
    assert all(len(row["input_ids"]) <= 24 for row in rows) and len(rows) < len(examples())
    assert sum(len(row["input_ids"]) for row in rows) == sum(len(e["input_ids"]) for e in examples())
    first = rows[0]
    starts = [i for i, position in enumerate(first["position_ids"]) if position == 0]
    assert starts[0] == 0 and len(starts) >= 2 and all(first["labels"][i] == IGNORE_INDEX for i in starts)
    batch = PackedCollator(0)(rows[:3])
    assert set(batch) == {"input_ids", "position_ids", "labels"}


@pytest.mark.parametrize("method", full_precision_methods())
def test_a_packed_batch_has_the_loss_and_gradients_of_the_unpacked_one(method):
    model = tiny_llama()
    options = {"adalora_total_steps": 10} if method == "adalora" else {}
    adapter = attach(model, method, rank=4, targets=TARGETS, **options)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so every parameter gets a gradient
        for param in adapter.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.eval()  # no dropout
    items = examples()
    padded = loss_and_grads(model, adapter, Collator(Pad())(items))
    packed = loss_and_grads(model, adapter, PackedCollator(0)(pack(items, max_length=24)))
    assert packed[2] == padded[2]  # the same trained tokens
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(packed[1], padded[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in padded[1])


def test_attending_across_examples_would_change_the_loss():
    """The check above can fail: without the restarting positions the rows are one sequence."""
    model = tiny_llama().eval()
    items = examples()
    packed = PackedCollator(0)(pack(items, max_length=24))
    joined = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    with torch.no_grad():
        assert abs(float(token_loss(model, packed)) - float(token_loss(model, joined))) > 1e-3


def test_training_with_packing_and_with_length_groups(tiny_model_dir, addition_data, tmp_path):
    import json

    from lorakit.config import load_config
    from lorakit.train import train

    def run(name, *extra):
        config = load_config(None, [f"model.path={tiny_model_dir}", f"data.path={addition_data}", "data.train_size=32",
                                    "data.eval_size=8", "data.max_length=132", "method.rank=2", "train.batch_size=2",
                                    "train.grad_accum=1", "train.lr=1e-2", "train.eval_every=null",
                                    "eval.metrics=[eval_loss]", f"train.output_dir={tmp_path / name}", *extra])
        summary = train(config, progress=False)
        first = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
        return summary, first

    padded, padded_first = run("padded")
    packed, packed_first = run("packed", "data.packing=true")
    grouped, _ = run("grouped", "data.group_by_length=true")
    assert padded["steps"] == grouped["steps"] == 16  # 32 examples, 2 per step
    assert packed["steps"] == 6  # 3 examples of 43 tokens per row of 132: 11 rows, 2 per step
    assert packed_first["eval_loss"] == padded_first["eval_loss"]  # evaluation is never packed
    assert packed["eval_loss"] < padded_first["eval_loss"]  # and it trains


def test_length_groups_hold_similar_lengths_and_every_example_once():
    from lorakit.train.data_order import step_batches

    lengths = [(7 * i) % 50 + 1 for i in range(64)]
    seen, spreads = [], []
    for step in range(8):
        batches = step_batches(step, 64, 4, 2, seed=3, lengths=lengths)
        assert batches == step_batches(step, 64, 4, 2, seed=3, lengths=lengths)  # deterministic
        for batch in batches:
            seen += batch
            spreads.append(max(lengths[i] for i in batch) - min(lengths[i] for i in batch))
    assert sorted(seen) == list(range(64))
    plain = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
             for step in range(8) for b in step_batches(step, 64, 4, 2, seed=3)]
    assert sum(spreads) < sum(plain) / 3


def test_packing_is_refused_where_it_would_not_be_exact(monkeypatch):
    from transformers import masking_utils

    from lorakit.config import load_config
    from lorakit.errors import LorakitError
    from lorakit.loading import check_packing

    with pytest.raises(LorakitError, match="lora_drop measures layer importance with the attention mask"):
        check_packing(load_config(None, ["data.packing=true", "method.name=lora_drop"]))
    monkeypatch.delattr(masking_utils, "find_packed_sequence_indices")
    with pytest.raises(LorakitError, match="data.packing and data.padding_free need transformers >= 4.54"):
        check_packing(load_config(None, ["data.packing=true"]))
