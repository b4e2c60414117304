"""What a slow command says while it works (``lorakit.status``): a line before each phase, bars,
nothing under ``--quiet``, and phase seconds that add up to the wall time."""

from __future__ import annotations

import json
import time

import pytest
from transformers.utils import logging as hf_logging

from cli_lines import status_lines
from lorakit import status
from lorakit.cli import main
from test_train import write_config


def test_phases_are_exclusive_and_add_up_to_the_wall_time():
    with status.Timer() as outer:
        time.sleep(0.05)  # in no phase: "other"
        with status.phase("load"):
            time.sleep(0.1)
            with status.Timer() as inner, status.phase("evaluate"):  # pauses "load" in both timers
                time.sleep(0.1)
            time.sleep(0.05)
    record, inner_record = outer.record(), inner.record()
    phases = record["phase_seconds"]
    assert set(phases) == {"load", "evaluate", "other"} and list(phases)[-1] == "other"
    assert phases["load"] == pytest.approx(0.15, abs=0.04) and phases["evaluate"] == pytest.approx(0.1, abs=0.04)
    assert phases["other"] == pytest.approx(0.05, abs=0.04)
    assert sum(phases.values()) == pytest.approx(record["seconds"], abs=0.03)
    assert inner_record["phase_seconds"]["evaluate"] == pytest.approx(0.1, abs=0.04)


def test_a_timer_counts_from_when_the_command_began():
    with status.Timer(began=time.time() - 2.0) as timer:
        pass
    record = timer.record()
    assert record["phase_seconds"]["start"] == pytest.approx(2.0, abs=0.05)
    assert record["seconds"] == pytest.approx(2.0, abs=0.05)
    assert timer.line().startswith("done in 2.0 s (start 2.0 s")


def test_quiet_hides_lines_and_bars_and_restores_transformers(capsys):
    hf_logging.enable_progress_bar()
    with status.quiet():
        status.say("not shown")
        assert status.bar(range(3)).disable and not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    with status.lines_hidden():
        status.say("not shown either")
        shown = status.bar(range(3))
        assert not shown.disable
        shown.close()
    capsys.readouterr()
    status.say("shown")
    assert capsys.readouterr().err == "lorakit: shown\n"


def test_train_says_each_phase_and_its_summary_adds_up(tiny_model_dir, addition_data, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=4", "train.eval_every=2", "eval.metrics=[eval_loss,bleu]",
                          "eval.generate_size=2", "eval.max_new_tokens=4")
    capsys.readouterr()
    assert main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    lines = status_lines(captured.err)
    said = " | ".join(lines)
    for needle in ("loading ", "tokenizing ", "attaching olora_plus adapters", "evaluating the starting point on",
                   "evaluating the loss on the eval split's", "generating 2 answers", "saving the adapter",
                   "done in "):
        assert needle in said, (needle, lines)
    assert lines[-1].startswith("lorakit: done in ")
    assert "train olora_plus" in captured.err  # the training bar
    summary = json.loads(captured.out)
    phases = summary["phase_seconds"]
    assert {"data", "load", "attach", "evaluate", "train", "generate", "other"} <= set(phases)
    assert sum(phases.values()) == pytest.approx(summary["seconds"], abs=0.05)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary


def test_quiet_train_writes_nothing_on_stderr(tiny_model_dir, addition_data, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=2", "eval.metrics=[eval_loss,bleu]", "eval.generate_size=2",
                          "eval.max_new_tokens=4")
    capsys.readouterr()
    assert main(["train", str(config), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_eval_and_generate_say_what_they_do(tiny_model_dir, addition_data, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "eval.metrics=[eval_loss]", "eval.max_new_tokens=4")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 + 2\n3 + 4\n")
    capsys.readouterr()
    assert main(["eval", str(config)]) == 0
    said = status_lines(capsys.readouterr().err)
    assert said[0].startswith("lorakit: loading ") and "evaluating the loss" in said[1]
    assert said[-1].startswith("lorakit: done in ")
    assert main(["generate", str(config), "--data", str(prompts), "--out", str(tmp_path / "g.jsonl")]) == 0
    said = status_lines(capsys.readouterr().err)
    assert any("generating 2 answers" in line for line in said), said
    assert main(["generate", str(config), "--data", str(prompts), "--out", str(tmp_path / "h.jsonl"),
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""
