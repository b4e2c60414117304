"""data.held_out_path: a further file the final evaluation scores, reported beside the eval split's
metrics as held_out_<metric>, and never read while tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit import LorakitError
from lorakit.cli import main
from lorakit.config import build_config
from lorakit.train import train


@pytest.fixture(scope="module")
def subtraction(tmp_path_factory) -> Path:
    """12 records of another task than the training one (subtraction, not addition)."""
    records = [{"instruction": f"Subtract {b} from {a}.", "input": "", "output": f"{a} minus {b} is {a - b}."}
               for a, b in zip(range(20, 32), range(1, 13))]
    path = tmp_path_factory.mktemp("held") / "subtraction.json"
    path.write_text(json.dumps(records))
    return path


def raw(model: Path, data: Path, held_out: Path | str, out: Path) -> dict:
    return {"model": {"path": str(model)},
            "data": {"path": str(data), "train_size": 32, "eval_size": 8, "max_length": 48,
                     "held_out_path": str(held_out)},
            "train": {"max_steps": 3, "batch_size": 4, "grad_accum": 1, "report_to": "none", "lr": 1e-3,
                      "output_dir": str(out)},
            "eval": {"metrics": ["eval_loss", "rougeL"], "generate_size": 5, "max_new_tokens": 6},
            "method": {"name": "lora", "rank": 2}}


def test_the_final_evaluation_also_scores_the_held_out_file(tiny_model_dir, addition_data, subtraction, tmp_path,
                                                            capsys):
    out = tmp_path / "run"
    summary = train(build_config(raw(tiny_model_dir, addition_data, subtraction, out)), progress=False)
    assert {"eval_loss", "rougeL", "held_out_eval_loss", "held_out_rougeL"} <= set(summary)
    assert summary["held_out_eval_loss"] != summary["eval_loss"]  # another file, another score
    assert len((out / "held_out" / "generations.jsonl").read_text().splitlines()) == 5  # eval.generate_size
    assert len((out / "generations.jsonl").read_text().splitlines()) == 5
    config_file = out / "config.yaml"
    # the same numbers as lorakit eval of the saved adapter on that file, and on the run's own config
    assert main(["eval", str(config_file), "--adapter", str(out / "adapter"), "--data", str(subtraction)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["eval_loss"] == pytest.approx(summary["held_out_eval_loss"], abs=1e-6)
    assert "held_out_eval_loss" not in alone  # --data scores that file alone
    assert main(["eval", str(config_file), "--adapter", str(out / "adapter")]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["held_out_eval_loss"] == pytest.approx(summary["held_out_eval_loss"], abs=1e-6)
    assert both["held_out_rougeL"] == pytest.approx(summary["held_out_rougeL"], abs=1e-6)


def test_a_missing_held_out_file_fails_before_training(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(LorakitError, match="absent.json"):
        train(build_config(raw(tiny_model_dir, addition_data, tmp_path / "absent.json", out)), progress=False)
    assert not (out / "checkpoints").exists()
    with pytest.raises(LorakitError, match="data.held_out_path is empty"):
        build_config(raw(tiny_model_dir, addition_data, " ", out))


def test_compare_reports_the_held_out_metrics_of_every_run_and_the_base_model(tiny_model_dir, addition_data,
                                                                               subtraction, tmp_path):
    from lorakit.experiments.compare import run_compare
    from lorakit.experiments.spec import load_compare_config

    out = tmp_path / "cmp"
    config = raw(tiny_model_dir, addition_data, subtraction, tmp_path / "unused")
    config["compare"] = {"runs": ["lora"], "seeds": [0], "output_dir": str(out)}
    base, spec, runs = load_compare_config(config)
    report = Path(run_compare(base, spec, runs, progress=False)).read_text()
    assert "held_out_eval_loss ↓" in report and "held_out_rougeL ↑" in report
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 2 and all(row["held_out_eval_loss"] is not None for row in results["rows"])
    assert (out / "base_model" / "held_out" / "generations.jsonl").exists()


def test_tune_neither_reads_the_held_out_file_nor_chooses_on_it(tiny_model_dir, addition_data, tmp_path):
    pytest.importorskip("optuna", reason="lorakit tune needs the optional extra lorakit[tune]")
    from lorakit.tune import tune

    out = tmp_path / "study"
    config = raw(tiny_model_dir, addition_data, tmp_path / "absent.json", tmp_path / "unused")
    config["tune"] = {"trials": 1, "pruner": "none", "output_dir": str(out),
                      "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    with pytest.raises(LorakitError, match="held-out file.*tune on 'eval_loss'"):
        tune({**config, "tune": {**config["tune"], "metric": "held_out_eval_loss"}}, progress=False)
    result = tune(config, progress=False)  # the absent held-out file is never read
    assert result["counted"] == 1
    trial = json.loads(next((out / "trials").glob("trial-*/summary.json")).read_text())
    assert "held_out_eval_loss" not in trial
