"""lorakit tune: the study, its outputs, its checks, and its workers (killed, or two at once)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

optuna = pytest.importorskip("optuna", reason="lorakit tune needs the optional extra lorakit[tune]")

from lorakit import LorakitError  # noqa: E402
from lorakit.config import load_config  # noqa: E402
from lorakit.loading import load_split  # noqa: E402
from lorakit.tune import tune  # noqa: E402
from lorakit.tuned import tuned_lines, tuned_values, tuned_yaml  # noqa: E402
from tiny import script  # noqa: E402


def raw_config(model: Path, data: Path, out: Path, steps: int = 4, **tune_section) -> dict:
    return {"model": {"path": str(model)},
            "data": {"path": str(data), "train_size": 48, "eval_size": 16, "max_length": 48},
            "train": {"max_steps": steps, "batch_size": 4, "grad_accum": 1, "report_to": "none", "lr": 1e-3},
            "eval": {"metrics": ["eval_loss"]}, "method": {"name": "lora", "rank": 2},
            "tune": {"trials": 2, "pruner": "none", "output_dir": str(out),
                     "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, **tune_section}}


def rows(out: Path) -> list[dict]:
    return json.loads((out / "trials.json").read_text())["trials"]


def test_a_study_writes_its_outputs_and_never_reads_the_eval_split(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "study"
    raw = raw_config(tiny_model_dir, addition_data, out, space={
        "train.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "method.rank": {"choices": [2, 4]}})
    raw["data"]["eval_path"] = str(tmp_path / "absent.json")  # read by nothing: tune measures on validation
    result = tune(raw, trials=3, progress=False)
    assert result["counted"] == 3 and "validation split" in result["split"]
    found = rows(out)
    assert [r["state"] for r in found] == ["complete"] * 3 and len({r["trial"] for r in found}) == 3
    best = min(found, key=lambda r: r["value"])
    assert result["best_value"] == best["value"] and result["best"]["method.rank"] == best["method.rank"]
    tuned = load_config(out / "best.yaml")  # a runnable config with the best values, the eval split kept
    assert tuned.train.lr == pytest.approx(best["train.lr"]) and tuned.method["rank"] == best["method.rank"]
    assert tuned.data.evaluate_on == "eval" and tuned.data.eval_path == str(tmp_path / "absent.json")
    trial = load_config(out / "trials" / f"trial-{best['trial']:04d}" / "config.yaml")
    assert trial.data.evaluate_on == "validation"
    train, validation = load_split(trial)
    assert len(train) + len(validation) == 48 and len(validation) == 4  # a tenth of the 48 training records
    report = (out / "report.md").read_text()
    assert "validation split" in report and "the eval split is not used" in report and "importances" in report
    assert {p.name for p in (out / "plots").iterdir()} >= {"history.png", "slice.png"}
    table = list(csv.DictReader((out / "trials.csv").open()))
    assert len(table) == 3 and {r["scored_on"] for r in table} == {f"eval_loss on the {result['split']}"}


@pytest.mark.parametrize("metric", ["eval_loss", "bleu"])
def test_trials_generate_only_when_scored_by_a_generation_metric(metric, tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "study"
    raw = raw_config(tiny_model_dir, addition_data, out, metric=metric)
    raw["eval"] = {"metrics": ["eval_loss", "bleu"], "generate_size": 2, "max_new_tokens": 4}
    tune(raw, trials=1, progress=False)
    trial = out / "trials" / "trial-0000"
    generated = metric == "bleu"
    assert (trial / "generations.jsonl").exists() == generated
    assert load_config(trial / "config.yaml").eval.metrics == (("eval_loss", "bleu") if generated else ("eval_loss",))
    assert load_config(out / "best.yaml").eval.metrics == ("eval_loss", "bleu")  # the user's own list


def test_trials_share_one_loaded_base_and_leave_it_unchanged(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    import lorakit.tune.trials as trials

    loads = []
    real = trials.load_base
    monkeypatch.setattr(trials, "load_base", lambda *a, **k: loads.append(1) or real(*a, **k))
    digests = []
    real_digest = trials.base_digest
    monkeypatch.setattr(trials, "base_digest", lambda model: digests.append(real_digest(model)) or digests[-1])
    tune(raw_config(tiny_model_dir, addition_data, tmp_path / "s"), trials=3, progress=False)
    assert len(loads) == 1 and len(digests) == 4 and len(set(digests)) == 1  # loaded once, verified after each


def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "s"
    raw = raw_config(tiny_model_dir, addition_data, out, sampler="grid",
                     space={"train.lr": {"choices": [1e-3, 1e30]}})
    raw["train"]["max_grad_norm"] = None
    result = tune(raw, trials=5, progress=False)  # the grid has 2 points: the budget is 2
    assert result["budget"] == 2
    by_lr = {r["train.lr"]: r for r in rows(out)}
    assert by_lr[1e-3]["state"] == "complete" and result["best"] == {"train.lr": 1e-3}
    assert by_lr[1e30]["state"] == "failed" and "diverged" in by_lr[1e30]["reason"]
    assert "did not complete" in (out / "report.md").read_text()


def test_a_pruned_trial_records_where_it_stopped(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    out = tmp_path / "s"
    raw = raw_config(tiny_model_dir, addition_data, out, steps=8, pruner="median")
    raw["train"]["eval_every"] = 2
    tune(raw, trials=2, progress=False)
    first, second = rows(out)
    assert first["state"] == "complete" and first["pruned_at"] is None
    assert second["state"] == "pruned" and second["pruned_at"] == 2


def test_the_pruner_gets_evaluations_without_train_eval_every(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "s"
    tune(raw_config(tiny_model_dir, addition_data, out, steps=8, pruner="median"), trials=1, progress=False)
    study = optuna.load_study(study_name="lorakit", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    assert sorted(study.trials[0].intermediate_values) == [2, 4, 6]  # a quarter of the 8 steps


def test_tpe_models_the_results_after_a_third_of_a_small_budget():
    from lorakit.tune.spec import read_tune
    from lorakit.tune.study import sampler_for

    space = {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    startup = {trials: sampler_for(read_tune({**space, "trials": trials}), [], 0)._n_startup_trials
               for trials in (2, 8, 20, 100)}
    assert startup == {2: 3, 8: 3, 20: 6, 100: 10}  # Optuna's 10 would leave 8 trials all random
    assert sampler_for(read_tune({**space, "startup_trials": 5}), [], 0)._n_startup_trials == 5


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t["space"].update({"train.lrr": {"low": 1, "high": 2}}), "unknown key 'train.lrr'.*did you mean"),
    (lambda t: t["space"].update({"method.lr_ratio": {"low": 1, "high": 2}}), "method lora has no option 'lr_ratio'"),
    (lambda t: t["space"].update({"train.lr": {"low": 1e-2, "high": 1e-3}}), "low must be below high"),
    (lambda t: t["space"].update({"train.lr": {"low": 0, "high": 1e-3, "log": True}}), "a log range needs low > 0"),
    (lambda t: t["space"].update({"method.rank": {"choices": []}}), "choices must be a non-empty list"),
    (lambda t: t["space"].update({"method.dropout": {"low": 0.0, "high": 1.5}}), "1.5 is refused.*dropout"),
    (lambda t: t["space"].update({"train.lr": {"low": -1.0, "high": 1e-3}}), "-1.0 is refused.*train.lr must be"),
    (lambda t: t["space"].update({"train.scheduler": {"low": 1, "high": 2}}), "takes choices"),
    (lambda t: t["space"].update({"data.eval_path": {"choices": ["x.json"]}}), "tune sets it"),
    (lambda t: t.update(metric="bleu"), "tune.metric 'bleu' is not computed"),
    (lambda t: t.update(sampler="grid"), "grid tries every combination of choices; train.lr is a range"),
    (lambda t: t.update(space={}), "tune.space is empty"),
    (lambda t: t.update(trials=0), "tune.trials must be a positive integer"),
    (lambda t: t.update(startup_trials=0), "tune.startup_trials must be a positive integer"),
    (lambda t: t.update(pruner="asha"), "tune.pruner must be one of"),
    (lambda t: t.update(storage="study.db"), "not a database URL"),
])
def test_bad_tune_input_is_one_line_before_any_trial(change, message, tiny_model_dir, addition_data, tmp_path):
    raw = raw_config(tiny_model_dir, addition_data, tmp_path / "s")
    change(raw["tune"])
    with pytest.raises(LorakitError, match=message):
        tune(raw, progress=False)
    assert not (tmp_path / "s" / "trials").exists()


def test_a_study_refuses_another_space_or_metric(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "s"
    tune(raw_config(tiny_model_dir, addition_data, out), trials=1, progress=False)
    other = raw_config(tiny_model_dir, addition_data, out, space={"train.lr": {"low": 1e-5, "high": 1e-2}})
    with pytest.raises(LorakitError, match="made with another space.*train.lr"):
        tune(other, progress=False)
    ppl = raw_config(tiny_model_dir, addition_data, out, metric="eval_ppl")
    ppl["eval"]["metrics"] = ["eval_loss", "eval_ppl"]
    with pytest.raises(LorakitError, match="another metric"):
        tune(ppl, progress=False)
    longer = raw_config(tiny_model_dir, addition_data, out, steps=5)
    with pytest.raises(LorakitError, match="another config.*max_steps: 4 then, 5 now"):
        tune(longer, progress=False)
    result = tune(raw_config(tiny_model_dir, addition_data, out), trials=2, progress=False)  # the same: continues
    assert result["counted"] == 2 and [r["trial"] for r in rows(out)] == [0, 1]


def test_a_study_made_before_a_key_existed_continues(tiny_model_dir, addition_data, tmp_path):
    """A study records its config's keys; one added to lorakit since (at its default) is no change,
    and the same key set otherwise still is."""
    out = tmp_path / "s"
    tune(raw_config(tiny_model_dir, addition_data, out), trials=1, progress=False)
    study = _study(out)
    recorded = study.user_attrs["lorakit"]
    del recorded["config"]["train"]["clip_epsilon"]  # as a study made before GRPO recorded it
    study.set_user_attr("lorakit", recorded)
    assert tune(raw_config(tiny_model_dir, addition_data, out), trials=2, progress=False)["counted"] == 2
    changed = raw_config(tiny_model_dir, addition_data, out)
    changed["train"]["clip_epsilon"] = 0.3
    with pytest.raises(LorakitError, match="another config.*clip_epsilon: 0.2 then, 0.3 now"):
        tune(changed, progress=False)


def test_a_trial_that_changes_the_shared_base_stops_the_study(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    """Trials train a copy of the loaded base; one that changed the base itself stops the study
    after it (an error out of the study, not one failed trial and more on a changed base)."""
    from lorakit.tune import trials

    def tampering(config, base, **kwargs):
        with torch.no_grad():
            next(base[0].parameters()).add_(1.0)
        return {"eval_loss": 1.0, "phase_seconds": {}}
    monkeypatch.setattr(trials, "train", tampering)
    out = tmp_path / "s"
    with pytest.raises(RuntimeError, match="changed the shared base model's weights; the study stops"):
        tune(raw_config(tiny_model_dir, addition_data, out), trials=3, progress=False)
    assert [r["trial"] for r in rows(out)] == [0]


def test_the_cli_says_bad_input_in_one_line(tiny_model_dir, addition_data, tmp_path):
    from lorakit.cli import main

    path = tmp_path / "c.yaml"
    raw = raw_config(tiny_model_dir, addition_data, tmp_path / "s", space={"train.lr": {"low": 1, "high": 1}})
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "lorakit", "tune", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "low must be below high" in result.stderr
    assert main(["train", str(path), "train.max_steps=1", f"train.output_dir={tmp_path / 'run'}", "--quiet"]) == 0


def _worker(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lorakit", "tune", str(config), "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _study(out: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="lorakit", storage=storage)


def _running(out: Path) -> set[int]:
    """The numbers of the study's running trials (none before its journal exists)."""
    if not (out / "study.journal").exists():
        return set()
    return {t.number for t in _study(out).get_trials(deepcopy=False) if t.state.name == "RUNNING"}


def _wait_for(predicate, process: subprocess.Popen, seconds: float = 240) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_trial_a_database_heartbeat_failed_is_replaced(tiny_model_dir, addition_data, tmp_path):
    """A worker on another machine that stops is failed by the database's heartbeat check, with no
    reason of lorakit's: the trial shows as interrupted and does not count, so another replaces it."""
    out = tmp_path / "s"
    tune(raw_config(tiny_model_dir, addition_data, out), trials=1, progress=False)
    study = _study(out)
    stale = study.ask()  # as a remote worker's trial, then failed by the heartbeat check
    study.tell(stale, state=optuna.trial.TrialState.FAIL)
    result = tune(raw_config(tiny_model_dir, addition_data, out), trials=2, progress=False)
    assert result["counted"] == 2
    states = {r["trial"]: (r["state"], r["reason"]) for r in rows(out)}
    assert states[1] == ("interrupted", "its worker stopped (no heartbeat to the database)")
    assert states[0][0] == states[2][0] == "complete"


def test_a_killed_study_continues_where_it_stopped(tiny_model_dir, addition_data, tmp_path):
    out, config = tmp_path / "s", tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw_config(tiny_model_dir, addition_data, out, steps=30, trials=3)))
    first = _worker(config)

    def second_running() -> bool:
        if not (out / "study.journal").exists():
            return False
        trials = _study(out).get_trials(deepcopy=False)
        return any(t.number >= 1 and t.state.name == "RUNNING" for t in trials) and trials[0].state.name == "COMPLETE"

    _wait_for(second_running, first)
    kept = _study(out).trials[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = _worker(config)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    trials = _study(out).trials
    assert trials[0].value == kept.value and trials[0].params == kept.params  # a finished trial is kept
    assert trials[1].state.name == "FAIL" and "interrupted" in trials[1].user_attrs["reason"]
    assert [t.state.name for t in trials[2:]] == ["COMPLETE", "COMPLETE"]  # the interrupted one is replaced
    assert [r["state"] for r in rows(out)] == ["complete", "interrupted", "complete", "complete"]
    assert json.loads(stdout)["counted"] == 3


def test_two_workers_share_one_study(tiny_model_dir, addition_data, tmp_path):
    out, config = tmp_path / "s", tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw_config(tiny_model_dir, addition_data, out, steps=20, trials=4)))
    first = _worker(config)
    _wait_for(lambda: _running(out) == {0}, first)
    first.send_signal(signal.SIGSTOP)  # trial 0 stays running while the second worker starts: they must overlap
    try:
        second = _worker(config)
        _wait_for(lambda: len(_running(out)) == 2, second)
    finally:
        first.send_signal(signal.SIGCONT)
    for worker in (first, second):
        _, stderr = worker.communicate(timeout=400)
        assert worker.returncode == 0, stderr
    counted = [t for t in _study(out).trials if "lorakit_unused" not in t.system_attrs]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 4  # none lost, none run twice
    assert len({t.number for t in counted}) == 4 and len({json.dumps(t.params) for t in counted}) == 4
    assert [r["trial"] for r in rows(out)] == [t.number for t in counted]
    assert len({r["worker"] for r in rows(out)}) == 2  # both worked on it
    assert {p.name for p in (out / "trials").iterdir()} == {f"trial-{t.number:04d}" for t in counted}


def test_compare_tunes_every_run_with_the_same_budget_before_its_seeds(tiny_model_dir, addition_data, tmp_path,
                                                                      monkeypatch):
    from lorakit.experiments.compare import run_compare
    from lorakit.experiments.spec import load_compare_config

    out = tmp_path / "results" / "study_tiny_tuned"
    raw = raw_config(tiny_model_dir, addition_data, tmp_path / "unused")
    raw["compare"] = {"runs": ["lora", "lora_plus"], "seeds": [0, 1], "output_dir": str(out), "base_model_row": False,
                      "tune": {"trials": 2, "pruner": "none", "space": {
                          "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                          "method.lr_ratio": {"low": 0.5, "high": 16, "log": True}}}}
    del raw["tune"]
    base, spec, runs = load_compare_config(raw)
    report = run_compare(base, spec, runs, progress=False).read_text()
    searched = {name: rows(out / "tune" / name) for name in ("lora", "lora_plus")}
    assert [len(found) for found in searched.values()] == [2, 2]  # equal budgets
    assert "method.lr_ratio" not in searched["lora"][0] and "method.lr_ratio" in searched["lora_plus"][0]
    for name, found in searched.items():
        best = min(found, key=lambda r: r["value"])
        for seed in (0, 1):
            trained = load_config(out / "runs" / name / f"seed-{seed}" / "config.yaml")
            assert trained.train.lr == pytest.approx(best["train.lr"]) and trained.data.evaluate_on == "eval"
    assert "## Tuning" in report and "validation split" in report and "the eval split is not used" in report
    # what each search found, as lorakit methods NAME and the method pages show it
    best = {name: min(found, key=lambda r: r["value"]) for name, found in searched.items()}
    (out / "README.md").write_text("# A tiny tuned study\n")
    studies = tuned_values(tuned_yaml(tmp_path / "results"))
    assert list(studies) == ["study_tiny_tuned"] and studies["study_tiny_tuned"]["trials"] == 2
    plus = studies["study_tiny_tuned"]["methods"]["lora_plus"]
    assert plus["lr"] == pytest.approx(best["lora_plus"]["train.lr"], rel=1e-2)
    assert plus["lr_ratio"] == pytest.approx(best["lora_plus"]["method.lr_ratio"], rel=1e-2)
    assert plus["lr_vs_lora"] == pytest.approx(best["lora_plus"]["train.lr"] / best["lora"]["train.lr"], rel=2e-2)
    line, = tuned_lines("lora_plus", studies)
    assert line.startswith("A tiny tuned study: lr = ") and "× LoRA's), lr_ratio = " in line
    assert "docs/results/study_tiny_tuned/README.md" in line and tuned_lines("dora", studies) == []
    # the study's records packed (scripts/study_state.py) and unpacked elsewhere: nothing trains again
    state = script("study_state")
    results = json.loads((out / "results.json").read_text())["rows"]
    (out / "README.md").unlink()
    state.pack(out, tmp_path / "state.tar.gz")
    shutil.rmtree(out)
    state.unpack(tmp_path / "state.tar.gz", out)
    with pytest.raises(SystemExit, match="exists"):
        state.unpack(tmp_path / "state.tar.gz", out)
    monkeypatch.setattr("lorakit.experiments.compare.train", _fail)
    monkeypatch.setattr("lorakit.tune.trials.train", _fail)
    run_compare(*load_compare_config(raw), progress=False)
    again = json.loads((out / "results.json").read_text())["rows"]
    key = ("run", "seed", "eval_loss")
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in results]


def _fail(*args, **kwargs):
    raise AssertionError("trained again")


def test_compare_tune_refuses_keys_a_comparison_cannot_vary(tiny_model_dir, addition_data, tmp_path):
    from lorakit.experiments.compare import run_compare
    from lorakit.experiments.spec import load_compare_config

    raw = raw_config(tiny_model_dir, addition_data, tmp_path / "unused")
    del raw["tune"]
    raw["compare"] = {"runs": ["lora"], "seeds": [0], "output_dir": str(tmp_path / "cmp"),
                      "tune": {"space": {"data.max_length": {"low": 16, "high": 48}}}}
    with pytest.raises(LorakitError, match="differ in method and train keys only"):
        run_compare(*load_compare_config(raw), progress=False)
    raw["compare"]["runs"] = ["lora", "lora_plus"]  # a grid over λ too is LoRA+'s alone: unequal budgets
    raw["compare"]["tune"] = {"sampler": "grid", "trials": 8, "space": {
        "train.lr": {"choices": [1e-3, 1e-2]}, "method.lr_ratio": {"choices": [0.5, 4.0]}}}
    with pytest.raises(LorakitError, match=r"different trial budgets \(lora 2, lora_plus 4 trials\)"):
        run_compare(*load_compare_config(raw), progress=False)
    assert not (tmp_path / "cmp").exists()


def test_a_study_in_a_database_file(tiny_model_dir, addition_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = tune(raw_config(tiny_model_dir, addition_data, tmp_path / "s", storage=url), trials=2, progress=False)
    assert result["counted"] == 2 and result["storage"] == url and not (tmp_path / "s" / "study.journal").exists()
    assert tune(raw_config(tiny_model_dir, addition_data, tmp_path / "s", storage=url), trials=2,
                progress=False)["counted"] == 2  # joined, nothing more to run
    other = raw_config(tiny_model_dir, addition_data, tmp_path / "t", storage=url, steps=5)  # another search
    assert tune(other, trials=1, progress=False)["counted"] == 1  # its own study in the same database
