"""An exported adapter in EleutherAI's lm-evaluation-harness (the ``hf`` model with ``peft=``), on a
local task over a local JSONL file: its log-likelihoods equal lorakit's own on the same items."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install lm-eval): the harness is "
                                                "optional, lorakit's own evaluation does not need it")

from lorakit.cli import main  # noqa: E402
from lorakit.data import format_prompt  # noqa: E402

TASK = """task: lorakit_addition
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "<s>{{{{prompt}}}}"
doc_to_target: "{{{{completion}}}}</s>"
metric_list:
  - metric: perplexity
"""


def test_lm_eval_scores_an_exported_adapter_as_lorakit_does(tiny_model_dir, addition_data, tmp_path, capsys,
                                                            monkeypatch):
    from test_train import write_config

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run", "train.max_steps=3",
                          "train.eval_every=null", "eval.metrics=[eval_loss]")  # OLoRA+: exported against W
    assert main(["train", str(config), "--quiet"]) == 0
    assert main(["export", str(tmp_path / "run" / "adapter"), str(tmp_path / "peft")]) == 0
    records = json.loads(addition_data.read_text())[:12]
    # the Alpaca records as prompt/completion items, the template's final newline opening the completion
    # (lm-eval moves a context's trailing whitespace into the continuation); lorakit adds <s> and </s>
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": format_prompt(r, "alpaca").rstrip("\n"),
                                         "completion": "\n" + r["output"]}) + "\n" for r in records))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "addition.yaml").write_text(TASK.format(data=items))
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},peft={tmp_path / 'peft'},dtype=float32", device="cpu",
        tasks=["lorakit_addition"], task_manager=lm_eval.tasks.TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True, batch_size=4)
    harness = [sample["resps"][0][0][0] for sample in results["samples"]["lorakit_addition"]]
    capsys.readouterr()
    assert main(["eval", str(config), "--adapter", str(tmp_path / "run" / "adapter"), "--data", str(items),
                 "--format", "prompt_completion"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert len(harness) == len(records)
    assert sum(harness) == pytest.approx(-ours["eval_loss"] * ours["eval_tokens"], rel=1e-5)
