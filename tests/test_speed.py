"""The speed options are exact: logits at the loss positions, padding-free batches, fused adapter
inputs and torch.compile give the loss and gradients of the plain path."""

from __future__ import annotations

import json

import pytest
import torch

import lorakit
from lorakit.config import load_config
from lorakit.data import Collator
from lorakit.data.packing import FlatCollator, PackedCollator, pack
from lorakit.evaluate.loss import LossLogits, label_tokens, token_loss
from lorakit.fused import SharedInput
from lorakit.train.objectives import sequence_logps
from test_packing import Pad, examples
from tiny import attach, batch, full_precision_methods, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapted(method: str = "lora", **options):
    """A tiny Llama with a non-zero adapter (every parameter gets a gradient), in eval mode."""
    model = tiny_llama()
    if method == "adalora":
        options.setdefault("adalora_total_steps", 10)
    adapter = attach(model, method, rank=4, targets=TARGETS, **options)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval(), adapter


def loss_and_grads(model, adapter, batch, logits=None, forward=None):
    """The batch's summed loss and the adapter's gradients (the batch moved to the model's device)."""
    model.zero_grad(set_to_none=True)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    loss = token_loss(model if forward is None else forward, batch, logits)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in adapter.parameters()]


def assert_same(got, expected, tolerance=1e-5):
    torch.testing.assert_close(got[0], expected[0], rtol=tolerance, atol=tolerance)
    for a, b in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert any(g.abs().sum() > 0 for g in expected[1])


# -- logits at the loss positions -----------------------------------------------------------------
@pytest.mark.parametrize("method", full_precision_methods())
def test_loss_position_logits_give_the_loss_and_gradients_of_all_logits(method):
    model, adapter = adapted(method)
    padded = Collator(Pad())(examples())
    logits = LossLogits(model)
    assert_same(loss_and_grads(model, adapter, padded, logits), loss_and_grads(model, adapter, padded))
    packed = PackedCollator(0)(pack(examples(), max_length=24))
    assert_same(loss_and_grads(model, adapter, packed, logits), loss_and_grads(model, adapter, packed))


def test_the_output_layer_sees_only_the_loss_positions():
    model, _ = adapted()
    padded = Collator(Pad())(examples())
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    logits = LossLogits(model)
    token_loss(model, padded, logits)
    token_loss(model, padded)
    assert seen[0] == (label_tokens(padded["labels"]), 64)  # trained tokens × hidden, not rows × width × hidden
    assert seen[1] == (*padded["input_ids"].shape, 64)
    with torch.no_grad():  # outside token_loss the model is untouched
        assert model(input_ids=padded["input_ids"]).logits.shape[:2] == padded["input_ids"].shape


def test_loss_position_logits_give_the_same_answer_log_probabilities():
    model, _ = adapted()
    padded = Collator(Pad())(examples())
    logits = LossLogits(model)
    with torch.no_grad():
        plain = sequence_logps(model, padded)
        sparse = sequence_logps(model, padded, logits)
        dense = -torch.nn.functional.cross_entropy(model(**{k: padded[k] for k in ("input_ids", "attention_mask")})
                                                   .logits[:, :-1].transpose(1, 2), padded["labels"][:, 1:],
                                                   reduction="none").sum(1)
    torch.testing.assert_close(sparse, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, dense, rtol=1e-5, atol=1e-5)


class Unusual(torch.nn.Module):
    """A causal LM that prepends a position before its output layer, or reshapes the logits after it."""

    def __init__(self, change: str):
        super().__init__()
        self.model, self.change = tiny_llama(), change

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(self, input_ids, **kwargs):
        h = self.model.model(input_ids=input_ids).last_hidden_state
        if self.change == "prepend":
            h = torch.cat([h[:, :1], h], dim=1)
        logits = self.model.lm_head(h)
        if self.change == "reshape":
            logits = logits.view(1, -1, logits.shape[-1])  # rows folded back
        return type("Out", (), {"logits": logits})


@pytest.mark.parametrize(("change", "message"), [("prepend", "output layer got hidden states of shape"),
                                                 ("reshape", "reshapes its logits")])
def test_a_model_whose_positions_do_not_match_is_refused_in_one_line(change, message):
    model = Unusual(change)
    with pytest.raises(lorakit.LorakitError, match=message) as error:
        token_loss(model, Collator(Pad())(examples()), LossLogits(model))
    assert "sparse_logits: false" in str(error.value) and "\n" not in str(error.value)


def test_the_selection_follows_a_new_output_layer():
    import copy

    model, adapter = adapted()
    padded = Collator(Pad())(examples())
    logits = LossLogits(model)
    expected = loss_and_grads(model, adapter, padded, logits)
    model.lm_head = copy.deepcopy(model.lm_head)  # as when a schedule puts a plain layer back
    assert_same(loss_and_grads(model, adapter, padded, logits), expected)


# -- padding-free batches -----------------------------------------------------------------------
def test_a_padding_free_batch_is_one_row_without_padding():
    items = examples()
    flat = FlatCollator()(items)
    assert flat["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in items))
    assert set(flat) == {"input_ids", "position_ids", "labels"}
    assert label_tokens(flat["labels"]) == label_tokens(Collator(Pad())(items)["labels"])
    from_rows = FlatCollator()(pack(items, max_length=24))  # packed rows flatten to the same row
    assert all(torch.equal(from_rows[k], flat[k]) for k in flat)


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "adalora"])
def test_a_padding_free_batch_has_the_loss_and_gradients_of_the_padded_one(method):
    model, adapter = adapted(method)
    items = examples()
    logits = LossLogits(model)
    expected = loss_and_grads(model, adapter, Collator(Pad())(items))
    assert_same(loss_and_grads(model, adapter, FlatCollator()(items), logits), expected)


# -- fused adapter inputs -----------------------------------------------------------------------
def test_siblings_that_read_one_input_are_grouped():
    model, adapter = adapted()
    assert adapter.fuse_shared_inputs() == 4  # q/k/v and gate/up in each of 2 blocks
    attention = model.model.layers[0].self_attn
    group = attention.q_proj.shared_input
    assert isinstance(group, SharedInput) and group is attention.k_proj.shared_input is attention.v_proj.shared_input
    assert attention.o_proj.shared_input is None
    assert model.model.layers[0].mlp.gate_proj.shared_input is model.model.layers[0].mlp.up_proj.shared_input
    _, with_dropout = adapted(dropout=0.1)
    assert with_dropout.fuse_shared_inputs() == 0  # each layer draws its own mask


@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "lora_fa", "weight_lora"])
def test_fused_inputs_give_the_loss_and_gradients_of_separate_ones(method, monkeypatch):
    model, adapter = adapted(method)
    padded = Collator(Pad())(examples())
    expected = loss_and_grads(model, adapter, padded)
    assert adapter.fuse_shared_inputs() > 0
    calls = []
    original = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: calls.append(w.shape) or original(x, w, b))
    got = loss_and_grads(model, adapter, padded)
    monkeypatch.undo()
    assert_same(got, expected)
    assert (12, 64) in calls  # q/k/v's A stacked: 3 × rank 4 rows


def test_a_sibling_called_on_another_input_computes_its_own():
    model, adapter = adapted()
    attention = model.model.layers[0].self_attn
    x, other = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    with torch.no_grad():
        expected = [attention.q_proj(x), attention.k_proj(other), attention.v_proj(x)]
        adapter.fuse_shared_inputs()
        got = [attention.q_proj(x), attention.k_proj(other), attention.v_proj(x)]
        x.mul_(2)  # changed in place: the stored product is stale
        again = attention.k_proj(x)
        x.div_(2)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        adapter.layers["model.layers.0.self_attn.k_proj"].shared_input = None
        torch.testing.assert_close(again, attention.k_proj(2 * x), rtol=1e-5, atol=1e-5)


def test_fused_siblings_share_an_input_width_and_run_in_inference_mode():
    class Attention(torch.nn.Module):  # keys and values read 4-wide states (cross-attention), queries 8-wide
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = torch.nn.Linear(8, 8), torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)

    model = torch.nn.Sequential(Attention())
    adapter = lorakit.attach(model, "lora", rank=2, targets=["q_proj", "k_proj", "v_proj"])
    assert adapter.fuse_shared_inputs() == 1
    attention = model[0]
    assert attention.q_proj.shared_input is None and attention.k_proj.shared_input is attention.v_proj.shared_input
    with torch.inference_mode():  # no version counter: each layer computes its own
        keys = torch.randn(3, 4)
        torch.testing.assert_close(attention.k_proj(keys), attention.k_proj.base_layer(keys))  # B = 0 at the start


def test_a_removed_layer_leaves_its_group():
    model, adapter = adapted()
    adapter.fuse_shared_inputs()
    mlp = model.model.layers[1].mlp
    group = mlp.gate_proj.shared_input
    adapter.remove_layer("model.layers.1.mlp.up_proj")
    assert mlp.gate_proj.shared_input is None and group.layers == []  # a group of one dissolves
    attention = model.model.layers[1].self_attn
    adapter.remove_layer("model.layers.1.self_attn.k_proj")
    assert attention.q_proj.shared_input.layers == [attention.q_proj, attention.v_proj]
    model(batch())  # and it still runs


# -- in training runs -----------------------------------------------------------------------------
def run(tiny_model_dir, addition_data, out, *extra):
    config = load_config(None, [f"model.path={tiny_model_dir}", f"data.path={addition_data}", "data.train_size=16",
                                "data.eval_size=8", "data.max_length=132", "method.rank=2", "train.batch_size=2",
                                "train.grad_accum=2", "train.lr=1e-2", "train.eval_every=null", "train.log_every=1",
                                "train.max_steps=3", "eval.metrics=[eval_loss]", "train.report_to=none",
                                f"train.output_dir={out}", *extra])
    summary = train_run(config)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    return summary, losses


def train_run(config):
    from lorakit.train import train

    return train(config, progress=False)


@pytest.fixture(scope="module")
def plain_run(tiny_model_dir, addition_data, tmp_path_factory):
    return run(tiny_model_dir, addition_data, tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("options", [("train.sparse_logits=false",), ("data.padding_free=true",),
                                     ("train.fused_adapters=true",), ("train.compile=true",)])
def test_a_run_with_a_speed_option_trains_as_the_plain_run(options, plain_run, tiny_model_dir, addition_data,
                                                           tmp_path, monkeypatch):
    """The same loss at every step and the same final eval loss (torch.compile: its float rounding)."""
    plain, plain_losses = plain_run
    groups = []
    fuse = lorakit.Adapter.fuse_shared_inputs
    monkeypatch.setattr(lorakit.Adapter, "fuse_shared_inputs", lambda self: groups.append(fuse(self)) or groups[-1])
    fast, fast_losses = run(tiny_model_dir, addition_data, tmp_path, *options)
    assert groups == ([2] if "train.fused_adapters=true" in options else [])  # q/v (default targets), 2 blocks
    assert fast["steps"] == plain["steps"] == 3
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=2e-4, atol=2e-4)
    assert fast["eval_loss"] == pytest.approx(plain["eval_loss"], rel=2e-4)


def test_fused_adapters_with_dropout_warn_that_they_change_nothing(tiny_model_dir, addition_data, tmp_path):
    with pytest.warns(UserWarning, match="changes nothing"):
        run(tiny_model_dir, addition_data, tmp_path, "train.fused_adapters=true", "method.dropout=0.1")


def test_packed_rows_train_padding_free_as_packed(tiny_model_dir, addition_data, tmp_path):
    packed, packed_losses = run(tiny_model_dir, addition_data, tmp_path / "packed", "data.packing=true")
    flat, flat_losses = run(tiny_model_dir, addition_data, tmp_path / "flat", "data.packing=true",
                            "data.padding_free=true")
    torch.testing.assert_close(torch.tensor(flat_losses), torch.tensor(packed_losses), rtol=2e-4, atol=2e-4)
    assert flat["eval_loss"] == pytest.approx(packed["eval_loss"], rel=2e-4)


def test_speed_options_may_change_when_a_run_resumes():
    from lorakit.train.output_dir import comparable

    def of(*overrides):
        return comparable(load_config(None, list(overrides)).to_dict())

    assert of() == of("train.compile=true", "train.fused_adapters=true", "train.sparse_logits=false",
                      "data.padding_free=true", "model.attention=eager", "train.gradient_checkpointing=true")
    assert of() != of("train.lr=1e-3") and of() != of("data.packing=true")


@pytest.mark.parametrize(("override", "message"), [
    ("model.attention=flash", "model.attention must be one of"),
    ("model.attention=flash_attention_2", "needs the flash_attn package"),
    ("train.kernels=triton", "train.kernels must be one of"),
    ("train.fused_adapters=true train.fsdp=true", "train.fused_adapters reads sibling"),
    ("data.padding_free=true train.objective=dpo", "data.padding_free joins the rows"),
    ("data.padding_free=true task.type=classification", "data.padding_free joins token sequences"),
])
def test_speed_options_that_cannot_work_are_refused_in_one_line(override, message):
    with pytest.raises(lorakit.LorakitError, match=message):
        load_config(None, override.split())


def test_the_attention_kernel_is_set_on_the_loaded_model():
    from lorakit.loading import set_attention

    model = tiny_llama()
    set_attention(model, "eager")
    assert model.config._attn_implementation == "eager"


def test_liger_kernels_are_refused_without_cuda_or_the_package():
    from lorakit.integrations.liger import apply_liger

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; tests/test_cuda.py runs liger there")
    with pytest.raises(lorakit.LorakitError, match="CUDA"):
        apply_liger(tiny_llama())
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        with pytest.raises(lorakit.LorakitError, match="lorakit\\[kernels\\]"):
            load_config(None, ["train.kernels=liger"])


def test_padding_free_refuses_lora_drop(tiny_model_dir, addition_data, tmp_path):
    with pytest.raises(lorakit.LorakitError, match="padding-free"):
        run(tiny_model_dir, addition_data, tmp_path / "drop", "data.padding_free=true", "method.name=lora_drop",
            "method.drop_warmup_steps=1")


def test_the_speed_benchmark_writes_its_rows(tmp_path):
    import train_speed

    out = tmp_path / "speed.json"
    train_speed.main(["--model", "tiny", "--data", "synthetic", "--examples", "16", "--batch", "2", "--seq", "32",
                      "--steps", "1", "--warmup", "0", "--repeats", "2", "--rank", "2",
                      "--variants", "floor,floor sparse,peft,lorakit,lorakit fused,lorakit packed,lorakit padding-free",
                      "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["variant"] for r in rows][:3] == ["floor", "floor sparse", "peft"]
    for row in rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["library"] in ("transformers", "peft", "lorakit")
        assert len(row["step_times_ms"]) == 2 and row["saved_mib"] > 0
    assert "N = " in result["meta"]["flops"] and "measured" in result["meta"]["peak"]
