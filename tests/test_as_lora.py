"""export --as-lora: any method as plain LoRA pairs of its whole change, exact where the change's rank
allows (PEFT then computes the adapter's logits), truncated SVD otherwise, each error reported."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from lorakit import LorakitError
from lorakit.io.as_lora import VLLM_RANKS, total_change
from test_contracts import logits
from test_peft_export import SCHEDULE_CASES, trained
from tiny import batch, full_precision_methods, tiny_llama


def peft_logits(folder, x):
    return logits(PeftModel.from_pretrained(tiny_llama(), folder).eval(), x)


@pytest.mark.parametrize("method", [m for m in full_precision_methods() if m != "dora"])
def test_every_low_rank_method_exports_exactly_as_plain_lora(method, tmp_path):
    model, adapter = trained(method, **SCHEDULE_CASES.get(method, {}))
    record = adapter.save_as_lora(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert not config["use_dora"] and config["r"] == config["lora_alpha"] == record["rank"]
    assert record["max_relative_error"] < 1e-5 and record["changes"] == []
    assert record["max_abs_logit_difference"] < 5e-5
    assert json.loads((tmp_path / "plain" / "as_lora.json").read_text()) == json.loads(json.dumps(record))
    x = batch(seed=1)
    torch.testing.assert_close(peft_logits(tmp_path / "plain", x), logits(model, x), atol=5e-5, rtol=0)


def test_dora_becomes_the_best_plain_lora_of_its_rank_and_exact_at_full_rank(tmp_path):
    model, adapter = trained("dora")
    x = batch(seed=1)
    name = next(iter(adapter.layers))
    delta = total_change(adapter, name)
    singular = torch.linalg.svdvals(delta)
    record = adapter.save_as_lora(tmp_path / "r4")
    optimum = float(singular[4:].norm() / singular.norm())  # Eckart–Young: nothing of rank 4 does better
    assert record["rank"] == 4 and record["layers"][name]["relative_error"] == pytest.approx(optimum, rel=1e-3)
    assert 0 < record["max_relative_error"] < 1
    full = adapter.save_as_lora(tmp_path / "full", rank=min(delta.shape))
    assert full["max_relative_error"] < 1e-5 and full["max_abs_logit_difference"] < 1e-4
    torch.testing.assert_close(peft_logits(tmp_path / "full", x), logits(model, x), atol=1e-4, rtol=0)
    # the reported logit difference is that of the written file on the original base
    written = (peft_logits(tmp_path / "r4", x) - logits(model, x)).abs().max()
    assert written > 1e-5


def test_a_rank_cap_truncates_by_svd_and_says_so(tmp_path):
    model, adapter = trained("olora")  # exact rank 2r = 8
    record = adapter.save_as_lora(tmp_path / "capped", rank=3)
    assert record["rank"] == 3 and record["max_relative_error"] > 1e-3
    assert record["changes"] == ["layers whose exact change has a rank above 3 truncated to it by SVD"]
    for name, layer in record["layers"].items():
        singular = torch.linalg.svdvals(total_change(adapter, name))
        assert layer["relative_error"] == pytest.approx(float(singular[3:].norm() / singular.norm()), rel=1e-3)


def test_the_vllm_target_pads_to_an_allowed_rank_and_refuses_whole_modules(tmp_path):
    _, adapter = trained("lora")  # rank 4
    record = adapter.save_as_lora(tmp_path / "vllm", target="vllm")
    assert record["rank"] == 8 and record["rank"] in VLLM_RANKS and record["max_relative_error"] < 1e-5
    assert record["changes"] == ["rank padded from 4 to 8 with zeros (exact): one of vLLM's --max-lora-rank values"]
    x = batch(seed=1)
    torch.testing.assert_close(peft_logits(tmp_path / "vllm", x), logits(adapter.model, x), atol=5e-5, rtol=0)
    _, whole = trained("lora", train_modules=["lm_head"])
    with pytest.raises(LorakitError, match="vLLM serves no modules_to_save"):
        whole.save_as_lora(tmp_path / "refused", target="vllm")
    assert not (tmp_path / "refused").exists()


def test_the_cli_exports_as_lora_and_refuses_bad_ranks(tiny_model_dir, addition_data, tmp_path, capsys):
    from lorakit.cli import main
    from test_train import write_config

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run", "train.max_steps=2",
                          "train.eval_every=null")  # OLoRA+: a change of rank 2r = 8
    assert main(["train", str(config), "--quiet"]) == 0
    adapter = str(tmp_path / "run" / "adapter")
    capsys.readouterr()
    assert main(["export", adapter, str(tmp_path / "x"), "--rank", "2"]) == 2
    assert "add --as-lora" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", adapter, str(tmp_path / "x"), "--as-lora", "--rank", "0"]) == 2
    assert "give a positive rank" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", adapter, str(tmp_path / "x"), "--target", "vllm", "--rank", "2"]) == 0
    out = capsys.readouterr().out
    assert "plain LoRA written to" in out and "largest relative error of ΔW" in out
    assert "changed for vllm: layers whose exact change has a rank above 2" in out and "from 2 to 8" in out
    record = json.loads((tmp_path / "x" / "as_lora.json").read_text())
    assert record["target"] == "vllm" and record["rank"] == 8 and record["max_relative_error"] > 0
    assert json.loads((tmp_path / "x" / "adapter_config.json").read_text())["r"] == 8
