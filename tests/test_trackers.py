"""``train.report_to``: the same metrics and the config in TensorBoard, W&B (offline) and MLflow (file store)."""

from __future__ import annotations

import json

import pytest

from lorakit.config import load_config
from lorakit.errors import LorakitError
from lorakit.train import train
from test_train import metrics, overrides, tensorboard_scalars


def config(model_dir, data, out, *extra):
    return load_config(None, overrides(model_dir, data, out, "train.max_steps=4", "train.log_every=1",
                                       "train.eval_every=2", "train.save_every=2", "eval.metrics=[eval_loss]", *extra))


def test_tensorboard_wandb_and_mlflow_get_the_same_metrics_and_the_config(tiny_model_dir, addition_data, tmp_path,
                                                                          monkeypatch):
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    train(config(tiny_model_dir, addition_data, out, "train.report_to=[tensorboard, wandb, mlflow]"), progress=False)
    losses = [(r["step"], r["loss"]) for r in metrics(out) if "loss" in r]
    # TensorBoard, as TensorBoard reads it
    board = tensorboard_scalars(out)
    assert [(s, pytest.approx(v)) for s, v in board["train/loss"]] == losses
    # MLflow's file store in the run's folder: the metric history and the config as parameters
    ids = json.loads((out / "trackers.json").read_text())
    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    history = client.get_metric_history(ids["mlflow"], "train/loss")
    assert [(m.step, pytest.approx(m.value)) for m in history] == losses
    run = client.get_run(ids["mlflow"])
    assert run.data.params["train.lr"] == "0.005" and run.data.params["method.name"] == "olora_plus"
    assert "eval/eval_loss" in run.data.metrics
    # W&B's offline run: its files in <output_dir>/wandb, the config and the last metrics in its summary
    offline = list((out / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert wandb.__version__


def test_a_resumed_run_continues_the_same_tracker_run(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"

    def crash(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir, addition_data, out, "train.report_to=mlflow"), callbacks=[crash], progress=False)
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    train(config(tiny_model_dir, addition_data, out, "train.report_to=mlflow"), resume=True, progress=False)
    assert json.loads((out / "trackers.json").read_text())["mlflow"] == run_id
    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    assert {m.step for m in client.get_metric_history(run_id, "train/loss")} == {1, 2, 3, 4}
    assert len(client.search_runs(client.get_run(run_id).info.experiment_id)) == 1


@pytest.mark.parametrize("value,needle", [
    ("[tensorboard, comet]", "report_to must be one of .*got 'comet'"),
    ("[none, wandb]", "give none alone"),
])
def test_bad_report_to_is_one_line_error(value, needle, tiny_model_dir, addition_data, tmp_path):
    with pytest.raises(LorakitError, match=needle):
        config(tiny_model_dir, addition_data, tmp_path, f"train.report_to={value}")


def test_report_to_none_and_the_old_tensorboard_key(tiny_model_dir, addition_data, tmp_path):
    assert config(tiny_model_dir, addition_data, tmp_path, "train.report_to=none").train.report_to == ("none",)
    assert config(tiny_model_dir, addition_data, tmp_path, "train.tensorboard=false").train.report_to == ("none",)
    assert config(tiny_model_dir, addition_data, tmp_path, "train.report_to=wandb").train.report_to == ("wandb",)


def test_a_tracker_whose_client_is_missing_is_a_one_line_error(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else found(name, *a))
    needs = r"report_to wandb needs the wandb package; pip install \"lorakit\[trackers\]\""
    with pytest.raises(LorakitError, match=needs):
        config(tiny_model_dir, addition_data, tmp_path, "train.report_to=wandb")
