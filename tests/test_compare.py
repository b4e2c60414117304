"""``lorakit compare``: runs × seeds on a tiny model, results, report, plots, resumable sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import lorakit
from lorakit.cli import main
from lorakit.experiments import compare as compare_module
from lorakit.experiments.compare import run_compare
from lorakit.experiments.spec import load_compare_config


def compare_raw(model_dir: Path, data: Path, out: Path) -> dict:
    return {
        "model": {"path": str(model_dir)},
        "method": {"rank": 4, "targets": "all-linear"},
        "data": {"path": str(data), "train_size": 32, "eval_size": 8, "max_length": 48, "shuffle_seed": 0},
        "train": {"lr": 5e-3, "batch_size": 4, "grad_accum": 1, "log_every": 2, "eval_every": 4, "save_every": 4},
        "eval": {"metrics": ["eval_loss", "eval_ppl", "bleu", "rouge1", "rouge2", "rougeL", "tf_bleu", "tf_rougeL"],
                 "max_new_tokens": 8},
        "compare": {"runs": ["olora", {"method": {"name": "olora_plus", "lr_ratio": 0.5}},
                             {"method": {"name": "olora_plus", "lr_ratio": 4}}],
                    "seeds": [0, 1], "output_dir": str(out)},
    }


def test_compare_writes_results_report_and_plots(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    base, spec, runs = load_compare_config(compare_raw(tiny_model_dir, addition_data, out))
    assert [r.name for r in runs] == ["olora", "olora_plus λ=0.5", "olora_plus λ=4"]
    assert spec.baseline == "olora"
    report = run_compare(base, spec, runs, progress=False)
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["run"], r["seed"]) for r in rows] == [("base model", None)] + [
        (name, seed) for name in ["olora", "olora_plus λ=0.5", "olora_plus λ=4"] for seed in (0, 1)]
    for row in rows:
        assert row["status"] == "ok"
        assert {"eval_loss", "bleu", "rougeL", "tf_bleu", "tf_rougeL"} <= set(row)
    assert [a["n"] for a in results["aggregates"]] == [2, 2, 2]
    text = report.read_text()
    assert "olora_plus λ=0.5" in text and "Paired difference vs olora" in text
    for png in ["loss_curves.png", "metrics.png", "lambda_sweep.png"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    generations = (out / "runs" / "olora" / "seed-0" / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 8 and {"reference", "prediction"} <= set(json.loads(generations[0]))
    assert (out / "results.csv").read_text().count("\n") == 8  # header, base model, 3 runs × 2 seeds

    # a re-run trains nothing: every run is finished
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(compare_module, "train", no_training)
    run_compare(base, spec, runs, progress=False)
    assert json.loads((out / "results.json").read_text())["rows"] == rows


def test_failed_run_is_a_row_not_a_gap(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    raw = compare_raw(tiny_model_dir, addition_data, out)
    raw["compare"]["runs"] = ["olora", "lora"]
    raw["compare"]["seeds"] = [0]
    base, spec, runs = load_compare_config(raw)
    real_train = compare_module.train

    def flaky(config, **kwargs):
        if config.method["name"] == "lora":
            raise RuntimeError("out of memory (simulated)")
        return real_train(config, **kwargs)
    monkeypatch.setattr(compare_module, "train", flaky)
    report = run_compare(base, spec, runs, progress=False)
    rows = {r["run"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["lora"]["status"] == "failed" and "out of memory" in rows["lora"]["error"]
    assert "out of memory" in report.read_text()


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r["eval"].update(metrics=["eval_loss", "meteor"]), "unknown metric 'meteor'"),
    (lambda r: r["compare"].update(runs=["olora", "qlora"]), "unknown method 'qlora'"),
    (lambda r: r["compare"].update(seeds=[]), "compare.seeds is empty"),
    (lambda r: r["eval"].update(max_new_tokens=0), "eval.max_new_tokens"),
    (lambda r: r["compare"].update(baseline="nope"), "compare.baseline 'nope'"),
    (lambda r: r["compare"].update(runs=[{"method": {"name": "olora", "lr_ratio": 2}}]), "lr_ratio=2.0 has no effect"),
    (lambda r: r["compare"].update(runs=[{"method": None}]), "compare.runs[0] must be a method name"),
    (lambda r: r["compare"].update(output_dir=""), "compare.output_dir is empty"),
    (lambda r: r["compare"].__setitem__(7, 1), "unknown config key 'compare.7'"),
    (lambda r: r["compare"].update(runs=[{"method": "lora", "train": {"lrr": 1e-3}}]),
     "unknown config key 'compare.runs[0].train.lrr' (did you mean 'lr'?)"),
    (lambda r: r["compare"].update(runs=["lora", {"method": "lora", "train": {"seed": 3}}]),
     "compare.runs[1].train.seed cannot differ between runs"),
    (lambda r: r["compare"].update(runs=[{"method": "lora", "train": {"lr": -1.0}}]), "train.lr must be a finite"),
    (lambda r: r["compare"].update(runs=[{"method": "lora", "train": "fast"}]), "compare.runs[0].train must be"),
])
def test_bad_compare_config_fails_before_training(edit, needle, tiny_model_dir, addition_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    raw = compare_raw(tiny_model_dir, addition_data, out)
    edit(raw)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    assert main(["compare", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_records_without_output_fail_before_training(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "no_output.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "input": ""}) + "\n" for i in range(50)))
    raw = compare_raw(tiny_model_dir, data, tmp_path / "cmp")
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    assert main(["compare", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "record 0" in err and "has no 'output'" in err, err
    assert not (tmp_path / "cmp" / "runs").exists()


def test_a_run_overrides_train_keys_for_itself_alone(tiny_model_dir, addition_data, tmp_path):
    """Per-run train keys (its own learning rate, warm-up) change that run only; the name says so,
    and the rows carry each run's learning rate."""
    raw = compare_raw(tiny_model_dir, addition_data, tmp_path / "cmp")
    raw["eval"] = {"metrics": ["eval_loss"]}
    raw["compare"].update(runs=["lora", {"method": {"name": "lora", "lr_scale": 3.0},
                                         "train": {"lr": 5e-4, "warmup_steps": 2}}], seeds=[0], base_model_row=False)
    base, spec, runs = load_compare_config(raw)
    assert [r.name for r in runs] == ["lora", "lora lr=0.0005 warmup_steps=2"]
    run_compare(base, spec, runs, progress=False)
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"]
    # each row's rate and its method's lr_scale: the optimizer ran at their product
    assert [(r["lr"], r["lr_scale"], r["status"]) for r in rows] == [(5e-3, 1.0, "ok"), (5e-4, 3.0, "ok")]
    assert rows[0]["eval_loss"] != rows[1]["eval_loss"]
    saved = [yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())["train"] for r in rows]
    assert [(t["lr"], t["warmup_steps"], t["batch_size"]) for t in saved] == [(5e-3, 0, 4), (5e-4, 2, 4)]


def test_demo_config_is_valid():
    from lorakit.config import read_yaml

    raw = read_yaml(Path(lorakit.__file__).parent / "experiments" / "demo.yaml")
    base, spec, runs = load_compare_config(raw)
    assert base.model.path == "embedded" and len(spec.seeds) >= 2
    assert {r.method["name"] for r in runs} == {"lora", "olora", "olora_plus"}
    ratios = {r.method.get("lr_ratio") for r in runs if r.method["name"] == "olora_plus"}
    assert min(ratios) < 1 < max(ratios)


def test_classification_demo_config_is_valid_and_runs(tmp_path):
    from lorakit.config import read_yaml

    raw = read_yaml(Path(lorakit.__file__).parent / "experiments" / "demo_classification.yaml")
    base, spec, runs = load_compare_config(raw)
    assert base.task.type == "classification" and base.model.path == "embedded-encoder" and len(spec.seeds) >= 2
    assert {"adalora", "simplex_lora", "weight_lora_plus"} <= {r.method["name"] for r in runs}
    out = tmp_path / "demo"
    assert main(["demo", "--task", "classification", "--quiet", "compare.runs=[lora]", "compare.seeds=[0]",
                 "data.train_size=32", "data.eval_size=16", "train.epochs=1", f"compare.output_dir={out}"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"] and rows[1]["accuracy"] is not None
    assert "## Resources" in (out / "report.md").read_text()


def test_compare_runs_the_other_forms_and_recipes(tiny_model_dir, addition_data, tmp_path):
    raw = compare_raw(tiny_model_dir, addition_data, tmp_path / "cmp")
    raw["method"]["dropout"] = 0.0  # Delta-LoRA requires it
    raw["eval"] = {"metrics": ["eval_loss", "rougeL"], "max_new_tokens": 4}
    raw["compare"].update(runs=["dora", {"method": {"name": "vera", "rank": 32}}, "lora_fa", "delta_lora",
                                {"method": {"name": "simplex_lora", "simplex_every": 2, "simplex_reallocations": 2}},
                                "adalora", {"method": {"name": "lora_drop", "drop_warmup_steps": 2, "drop_top_n": 6}}],
                          seeds=[0], baseline="dora")
    base, spec, runs = load_compare_config(raw)
    report = run_compare(base, spec, runs, progress=False).read_text()
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"]
    assert [(r["run"], r["status"]) for r in rows[1:]] == [
        ("dora", "ok"), ("vera", "ok"), ("lora_fa", "ok"), ("delta_lora", "ok"), ("simplex_lora", "ok"),
        ("adalora", "ok"), ("lora_drop", "ok")]
    # where the rank budget went: only the runs whose schedule changes ranks, one line per layer
    section = report.split("## Final rank per layer")[1].split("##")[0]
    assert "| layer | simplex_lora | adalora | lora_drop |" in section
    table = [line for line in section.splitlines() if line.startswith("| ") and "layer" not in line]
    assert len(table) == 14 + 1  # 2 blocks × 7 projections, and the total
    adalora_total = float(table[-1].split("|")[3])
    assert adalora_total == 14 * 2  # b_T = ⌈4/2⌉ per layer
    assert (tmp_path / "cmp" / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](ranks.png)" in report
    summary = json.loads((tmp_path / "cmp" / "runs" / "simplex_lora" / "seed-0" / "summary.json").read_text())
    assert sum(summary["final_ranks"].values()) == sum(float(line.split("|")[2]) for line in table[:-1])
    for adapter in (tmp_path / "cmp" / "runs").glob("*/seed-*/adapter"):  # as a study unpacked from its state
        shutil.rmtree(adapter)
    again = run_compare(base, spec, runs, progress=False).read_text()  # every run finished: nothing trains
    assert again.split("## Final rank per layer")[1].split("##")[0] == section


def test_cli_points_a_compare_config_to_compare_and_reads_demo_paths_verbatim(tiny_model_dir, addition_data,
                                                                               tmp_path, capsys):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(compare_raw(tiny_model_dir, addition_data, tmp_path / "cmp")))
    assert main(["train", str(path)]) == 2
    assert "run it with lorakit compare" in capsys.readouterr().err
    assert main(["demo", "--data", "#x: y.json"]) == 2  # a path, not a YAML value
    assert "data file #x: y.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("lorakit ")


def test_an_interrupted_run_resumes_on_the_next_compare(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    """A sweep re-run continues a run from its checkpoint (with a YAML list of targets, as in the
    shipped configs) and ends with the adapter of an uninterrupted sweep."""
    from safetensors.torch import load_file

    def sweep(out: Path):
        raw = compare_raw(tiny_model_dir, addition_data, out)
        raw["method"]["targets"] = ["q_proj", "v_proj"]
        raw["compare"].update(runs=["lora"], seeds=[0], base_model_row=False)
        return load_compare_config(raw)

    run_compare(*sweep(tmp_path / "full"), progress=False)
    real_train = compare_module.train

    def killed(config, **kwargs):
        def stop(info):
            if info.step == 6:
                raise RuntimeError("killed (simulated)")
        return real_train(config, callbacks=[stop], **kwargs)
    monkeypatch.setattr(compare_module, "train", killed)
    with pytest.raises(lorakit.LorakitError, match="every run failed"):
        run_compare(*sweep(tmp_path / "cut"), progress=False)
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["rows"][0]["status"] == "failed"
    monkeypatch.setattr(compare_module, "train", real_train)
    run_compare(*sweep(tmp_path / "cut"), progress=False)
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["rows"][0]["status"] == "ok"
    adapter = Path("runs") / "lora" / "seed-0" / "adapter" / "lorakit_adapter.safetensors"
    full, cut = load_file(tmp_path / "full" / adapter), load_file(tmp_path / "cut" / adapter)
    assert full.keys() == cut.keys() and all((full[k] == cut[k]).all() for k in full)


def test_a_finished_run_whose_preset_default_changed_since_is_not_reused(tiny_model_dir, addition_data, tmp_path,
                                                                          monkeypatch):
    """A run records every option it ran with; when its method now resolves otherwise (a preset's
    default changed), compare refuses to report it as this comparison's run, and the row keeps the
    ``lr_scale`` the run had."""
    from lorakit.presets import PRESETS

    raw = compare_raw(tiny_model_dir, addition_data, tmp_path / "cmp")
    raw["eval"] = {"metrics": ["eval_loss"]}
    raw["train"].update(max_steps=2, eval_every=None, save_every=None)
    raw["compare"].update(runs=["vera"], seeds=[0])
    run_compare(*load_compare_config(raw), progress=False)
    row = json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"][-1]
    assert row["lr_scale"] == PRESETS["vera"]["lr_scale"]
    monkeypatch.setitem(PRESETS["vera"], "lr_scale", 2 * PRESETS["vera"]["lr_scale"])
    changed = r"was trained with method.lr_scale=25.0 \(as its method resolved then\), this comparison asks for 50.0"
    with pytest.raises(lorakit.LorakitError, match=changed):
        run_compare(*load_compare_config(raw), progress=False)
    summary_file = tmp_path / "cmp" / "runs" / "vera" / "seed-0" / "summary.json"
    summary = json.loads(summary_file.read_text())
    del summary["method_options"]  # a run from before summaries recorded their options: not refused,
    summary_file.write_text(json.dumps(summary))  # and its row keeps the lr_scale its results row recorded
    run_compare(*load_compare_config(raw), progress=False)
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"][-1]["lr_scale"] == 25.0
