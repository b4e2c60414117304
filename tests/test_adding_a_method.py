"""docs/adding-a-method.md, executed: its component file and preset line give a new method that
passes every contract test (attach unchanged, train, save/load, merge, gradients, PEFT export,
CLI train + merge) with nothing else added."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch

import lorakit
import test_contracts as contracts
import test_peft_export as export
from lorakit.inits import INITS
from lorakit.presets import PRESETS
from test_train import main_exit, write_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-method.md"
SRC = Path(__file__).resolve().parent.parent / "src" / "lorakit"


@pytest.fixture
def milora(monkeypatch, tmp_path):
    """The doc's component file (the shipped one, as it is) saved as a module and imported in place
    of the shipped one (registered again), and its preset line added; both undone after the test."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    component, preset_line = blocks[0], blocks[1].strip().rstrip(",")
    assert component == (SRC / "inits" / "milora.py").read_text(encoding="utf-8")
    monkeypatch.setattr(INITS, "_items", dict(INITS._items))
    monkeypatch.delitem(INITS._items, "milora")
    monkeypatch.delitem(PRESETS, "milora")
    (tmp_path / "doc_milora.py").write_text(component.replace("from .", "from lorakit.inits."))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "doc_milora", raising=False)
    __import__("doc_milora")
    name, preset = ast.literal_eval("{" + preset_line + "}").popitem()
    monkeypatch.setitem(PRESETS, name, preset)
    return name


def test_the_new_init_is_milora(milora):
    weight = torch.randn(24, 8) @ torch.randn(8, 32) + 0.1 * torch.randn(24, 32)
    B, A = INITS.get(milora).factors(weight, 4, 2.0, torch.Generator(), {})
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    torch.testing.assert_close(2.0 * B @ A, U[:, -4:] @ torch.diag(S[-4:]) @ Vh[-4:], atol=1e-5, rtol=0)
    assert milora in lorakit.methods() and lorakit.attach(contracts.tiny_llama(), milora).spec.init == "milora"


def test_every_contract_holds_for_the_new_method(milora, tmp_path):
    contracts.test_logits_unchanged_at_attach(milora)
    contracts.test_merged_equals_unmerged(milora)
    contracts.test_save_load_exact(milora, tmp_path / "save")
    contracts.test_gradients_reach_exactly_the_adapter(milora)
    contracts.test_short_run_lowers_loss(milora)
    export.test_peft_loads_every_preset_with_the_same_logits(milora, tmp_path / "peft")


def test_the_cli_trains_and_merges_the_new_method(milora, tiny_model_dir, addition_data, tmp_path):
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=3", f"method.name={milora}", "method.lr_ratio=null",
                          "train.eval_every=null")
    assert main_exit(["train", str(config), "--quiet"]) == 0
    assert main_exit(["merge", str(tmp_path / "run" / "adapter"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapter = lorakit.load(base, tmp_path / "run" / "adapter")
    assert adapter.spec.init == "milora"
    x = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, base(x).logits, atol=2e-5, rtol=0)
