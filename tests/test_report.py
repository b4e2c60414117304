"""Statistics, result files, report.md and plots of ``lorakit compare`` on synthetic rows."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
from scipy import stats as sps

from lorakit.errors import LorakitError
from lorakit.experiments.plots import (
    _aligned,
    _block_grid,
    plot_lambda_sweep,
    plot_loss_curves,
    plot_metric_bars,
    plot_ranks,
)
from lorakit.experiments.ranks import short_name
from lorakit.experiments.report import write_report, write_results
from lorakit.experiments.stats import aggregate, paired_difference, paired_vs_baseline
from tiny import script

METRICS = ["eval_loss", "bleu", "rouge1"]
OOM = "RuntimeError: CUDA out of memory"
# run → per seed (eval_loss, bleu, rouge1); None is a failed seed
VALUES = {
    "lora": [(1.60, 10.0, 0.30), (1.62, 11.0, 0.31), (1.61, 12.0, 0.32)],
    "olora": [(1.59, 11.0, 0.33), (1.63, 12.0, 0.31), None],
    "olora_plus λ=2": [(1.55, 12.0, 0.34), (1.58, 12.5, 0.35), (1.56, 14.0, 0.33)],
    "pissa": [None, None, None],
}
METHOD = {"lora": "lora", "olora": "olora", "olora_plus λ=2": "olora_plus", "pissa": "pissa"}


def _rows() -> list[dict]:
    rows = [{"run": "base model", "method": "none", "lr_ratio": None, "seed": None, "status": "ok",
             "error": None, "run_dir": "base_model", "eval_loss": 2.60, "bleu": 3.0, "rouge1": 0.90}]
    for run, per_seed in VALUES.items():
        for seed, values in enumerate(per_seed):
            row = {"run": run, "method": METHOD[run], "components": "A,B",
                   "lr_ratio": 2.0 if "λ" in run else None, "seed": seed, "run_dir": f"runs/{run}/{seed}",
                   "train_loss": 1.5, "seconds": 10.0, "trainable_parameters": 1024}
            if values is None:
                row.update(status="failed", error=f"{OOM}. Tried to allocate 2 GiB")
            else:
                row.update(status="ok", error=None, **dict(zip(METRICS, values)))
            rows.append(row)
    return rows


def _trained(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["method"] != "none"]


def _curves() -> dict[str, list[list[dict]]]:
    curves = {}
    for index, run in enumerate(["lora", "olora", "olora_plus λ=2"]):
        seeds = []
        for seed in range(3 if run != "olora" else 2):
            records = []
            for step in range(1, 41):
                loss = 1.6 + 0.9 * math.exp(-step / 10) + 0.02 * math.sin(step + seed) - 0.01 * index
                records.append({"step": step, "loss": loss, "lr": 1e-4})
                if step % 10 == 0:
                    records.append({"step": step, "eval_loss": loss + 0.03, "eval_ppl": math.exp(loss)})
            seeds.append(records)
        curves[run] = seeds
    return curves


def _assert_png(path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes


# -- statistics ------------------------------------------------------------------------------
def test_aggregate_means_stds_and_counts():
    aggs = {a["run"]: a for a in aggregate(_rows(), METRICS)}
    assert list(aggs) == ["base model", "lora", "olora", "olora_plus λ=2", "pissa"]
    lora = aggs["lora"]
    assert (lora["n"], lora["failed"], lora["method"]) == (3, 0, "lora")
    assert lora["eval_loss_mean"] == pytest.approx(1.61)
    assert lora["eval_loss_std"] == pytest.approx(0.01)
    assert lora["bleu_std"] == pytest.approx(1.0)
    olora = aggs["olora"]
    assert (olora["n"], olora["failed"]) == (2, 1)
    assert olora["eval_loss_mean"] == pytest.approx(1.61)
    assert olora["eval_loss_std"] == pytest.approx(statistics.stdev([1.59, 1.63]))
    plus = aggs["olora_plus λ=2"]
    assert plus["lr_ratio"] == 2.0
    assert plus["rouge1_std"] == pytest.approx(0.01)
    pissa = aggs["pissa"]
    assert (pissa["n"], pissa["failed"]) == (0, 3)
    assert pissa["eval_loss_mean"] is None and pissa["eval_loss_std"] is None
    base = aggs["base model"]
    assert (base["n"], base["eval_loss_mean"], base["eval_loss_std"]) == (1, 2.60, 0.0)


def test_paired_difference_matches_hand_computed_t_test():
    paired = paired_vs_baseline(_trained(_rows()), "lora", METRICS)
    assert set(paired) == {"olora", "olora_plus λ=2", "pissa"}
    d = [1.55 - 1.60, 1.58 - 1.62, 1.56 - 1.61]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    p = 2 * sps.t.sf(abs(t), df=2)
    got = paired["olora_plus λ=2"]["eval_loss"]
    assert got["n"] == 3
    assert got["mean_diff"] == pytest.approx(mean)
    assert got["std_diff"] == pytest.approx(sd)
    assert got["p_value"] == pytest.approx(p, rel=1e-6)
    assert got["p_value"] < 0.05
    # olora pairs only on the two seeds it finished
    olora = paired["olora"]["eval_loss"]
    assert olora["n"] == 2 and olora["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    assert olora["p_value"] == pytest.approx(1.0)
    assert paired["pissa"]["eval_loss"] == {"n": 0, "mean_diff": None, "std_diff": None, "p_value": None}


def test_paired_difference_without_a_defined_test():
    assert paired_difference([1.5], [1.6])["p_value"] is None
    constant = paired_difference([1.5, 1.6, 1.7], [1.6, 1.7, 1.8])  # every difference is −0.1
    assert constant["p_value"] is None and constant["mean_diff"] == pytest.approx(-0.1)
    assert constant["std_diff"] == pytest.approx(0.0, abs=1e-12)


def test_unknown_baseline_names_the_runs():
    with pytest.raises(LorakitError, match="lora") as info:
        paired_vs_baseline(_rows(), "loar", METRICS)
    assert "olora_plus λ=2" in str(info.value) and "did you mean 'lora'" in str(info.value)


# -- result files and report -----------------------------------------------------------------
def test_results_json_and_csvs(tmp_path):
    rows = _rows()
    rows[1]["train_loss"] = float("nan")  # strict JSON has no NaN: written as null
    aggs = aggregate(_trained(rows), METRICS)
    write_results(tmp_path, rows, aggs)
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["rows"]) == len(rows) and data["aggregates"] == aggs
    assert data["rows"][1]["train_loss"] is None and data["rows"][1]["run"] == "lora"
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        lines = list(reader)
    assert header[:7] == ["run", "method", "seed", "status", *METRICS]
    assert len(lines) == len(rows)
    assert lines[0]["run"] == "base model" and lines[0]["seed"] == ""
    failed = [line for line in lines if line["status"] == "failed"]
    assert len(failed) == 4 and all(line["eval_loss"] == "" for line in failed)
    assert float(lines[2]["eval_loss"]) == 1.62
    with open(tmp_path / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [s["run"] for s in summary] == ["lora", "olora", "olora_plus λ=2", "pissa"]
    assert float(summary[0]["eval_loss_mean"]) == pytest.approx(1.61)
    assert summary[3]["n"] == "0" and summary[3]["eval_loss_mean"] == ""


def test_report_markdown(tmp_path):
    rows = _rows()
    aggs = aggregate(_trained(rows), METRICS)  # as compare does: the base model only in rows
    paired = paired_vs_baseline(_trained(rows), "lora", METRICS)
    meta = {"model": "tiny-llama", "data": "addition.jsonl", "seeds": [0, 1, 2], "duration": 125.0,
            "command": "lorakit compare cfg.yaml"}
    path = write_report(tmp_path, rows, aggs, paired, METRICS, "lora",
                        ["loss_curves.png", str(tmp_path / "metrics.png")], meta)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "- **model**: tiny-llama" in text and "- **seeds**: 0, 1, 2" in text
    assert "`lorakit compare cfg.yaml`" in text and "2 min 5 s" in text
    assert "| run | seeds | eval_loss ↓ | bleu ↑ | rouge1 ↑ |" in text
    # best mean per column in bold: olora_plus on all three
    plus_line = next(line for line in text.splitlines() if line.startswith("| olora_plus λ=2 | 3 |"))
    assert "**1.5633 ± 0.0153**" in plus_line and "**12.83 ± 1.04**" in plus_line
    assert "**0.3400 ± 0.0100**" in plus_line
    assert "| olora | 2 (1 failed) | 1.6100 ± 0.0283 |" in text
    assert "| lora (baseline) | 3 | 1.6100 ± 0.0100 |" in text
    assert f"| pissa | 0 (3 failed) | failed: {OOM}" in text
    # the reference row is shown but never bold, even where its value is the highest
    base_line = next(line for line in text.splitlines() if "base model" in line)
    assert "2.6000" in base_line and "0.9000" in base_line and "**" not in base_line.split("|", 2)[2]
    assert "## Paired difference vs lora" in text
    assert "| olora_plus λ=2 | 3 | **-0.0467 ± 0.0058 (p = 0.005)** |" in text
    assert "**olora_plus λ=2** beats lora on eval_loss beyond seed noise" in text
    assert "**olora** does not differ from lora on eval_loss beyond seed noise" in text
    assert "**pissa** has no finished seed in common with lora" in text
    assert "base model** " not in text  # no verdict for the reference
    assert "![loss curves](loss_curves.png)" in text and "![metrics](metrics.png)" in text


def test_report_without_baseline(tmp_path):
    rows = _rows()
    text = write_report(tmp_path, rows, aggregate(rows, METRICS), {}, METRICS, None, [], {}).read_text()
    assert "Paired difference" not in text and "## Plots" not in text
    assert text.startswith("# lorakit compare")


# -- plots -----------------------------------------------------------------------------------
def test_plots_are_written(tmp_path):
    aggs = aggregate(_trained(_rows()), METRICS)
    plot_loss_curves(_curves(), tmp_path / "loss_curves.png")
    plot_metric_bars(aggs, METRICS, tmp_path / "metrics.png")
    _assert_png(tmp_path / "loss_curves.png")
    _assert_png(tmp_path / "metrics.png")


def test_rank_plot_of_a_deep_model_is_a_heatmap_of_readable_size(tmp_path):
    """120 layers × 5 runs once made a 25,500-pixel-wide bar chart; blocks × kinds heatmaps keep
    the figure near page width. Names that are not ``<block>.<kind>`` still get bars."""
    from matplotlib.image import imread

    layers = [f"model.layers.{i}.self_attn.{k}_proj" for i in range(30) for k in "qkvo"]
    table = {f"run{j}": {name: float((i + j) % 65) for i, name in enumerate(layers)} for j in range(5)}
    assert plot_ranks(table, tmp_path / "deep.png") is True
    height, width = imread(tmp_path / "deep.png").shape[:2]
    assert width < 2500 and height < 2500
    assert plot_ranks({"run": {"classifier": 4.0, "pooler": 2.0}}, tmp_path / "flat.png") is True
    _assert_png(tmp_path / "flat.png")
    two_stacks = {"run": {f"{stack}.block.{i}.q": 8.0 for stack in ("encoder", "decoder") for i in range(2)}}
    assert _block_grid([short_name(n) for n in two_stacks["run"]]) is None  # "0.q" twice: bars
    assert plot_ranks({}, tmp_path / "none.png") is False and not (tmp_path / "none.png").exists()


def test_lambda_sweep_needs_two_lambdas(tmp_path):
    aggs = aggregate(_trained(_rows()), METRICS)
    assert plot_lambda_sweep(aggs, tmp_path / "sweep.png", baseline="lora") is False
    assert not (tmp_path / "sweep.png").exists()
    more = aggs + [dict(aggs[2], run="olora_plus λ=4", lr_ratio=4.0, eval_loss_mean=1.55)]
    assert plot_lambda_sweep(more, tmp_path / "sweep.png", baseline="lora") is True
    _assert_png(tmp_path / "sweep.png")


def test_lambda_sweep_draws_symmetric_runs_as_their_own_line(tmp_path, monkeypatch):
    import lorakit.experiments.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    aggs = aggregate(_trained(_rows()), METRICS)
    sweep = [dict(aggs[2], run=f"olora_plus {mode} λ={ratio}", lr_ratio=ratio, lr_ratio_mode=mode)
             for mode in ("b_only", "symmetric") for ratio in (0.5, 2.0)]
    assert plot_lambda_sweep(aggs + sweep, tmp_path / "sweep.png", baseline="lora") is True
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert "olora_plus" in labels and "olora_plus (symmetric: η_B/η_A = λ²)" in labels


def test_curves_align_on_steps_all_seeds_logged():
    seeds = [[{"step": s, "loss": 1.0} for s in (1, 2, 3)], [{"step": s, "loss": 2.0} for s in (2, 3, 4)],
             [{"step": 2, "eval_loss": 5.0}]]
    steps, values = _aligned(seeds, "loss")
    assert steps.tolist() == [2, 3] and values.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert _aligned(seeds, "missing") is None


def test_convergence_steps_interpolate_between_evaluations_and_pair_by_seed(tmp_path, capsys):
    convergence = script("convergence")
    curve = [(0, 2.0), (10, 1.5), (20, 1.0)]
    assert convergence.steps_to(curve, 1.75) == pytest.approx(5.0)
    assert convergence.steps_to(curve, 1.5) == 10.0 and convergence.steps_to(curve, 2.5) == 0.0
    assert convergence.steps_to(curve, 0.9) is None
    # run folders with metrics.jsonl: "fast" reaches every target earlier on both seeds, "slow" ends above
    rows = []
    for run, ends in {"base": (1.0, 1.2), "fast": (0.8, 1.0), "slow": (1.6, 1.7)}.items():
        for seed, end in enumerate(ends):
            folder = tmp_path / "runs" / run / f"seed-{seed}"
            folder.mkdir(parents=True)
            records = [{"step": 0, "eval_loss": 2.0}, {"step": 5, "loss": 1.9},
                       {"step": 10, "eval_loss": (2.0 + end) / 2}, {"step": 20, "eval_loss": end}]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            rows.append({"run": run, "seed": seed, "status": "ok", "run_dir": str(folder)})
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.json").write_text(json.dumps({"rows": rows, "aggregates": []}))
    assert convergence.main([str(study), "--baseline", "base", "--fractions", "0.5", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | steps to 50% of base's drop | steps to 100% of base's drop |"
    assert lines[2] == "| base | 10.0 ± 0.0 | 20.0 ± 0.0 |"
    # fast, seed 0: target 1.5 on 2.0 → 1.4 over steps 0–10 is 8.33; seed 1 (target 1.6, 2.0 → 1.5): 8.0
    assert lines[3].startswith("| fast | 8.2 ± 0.2 (-1.8, p = ")
    assert lines[4] == "| slow | not reached (2 of 2 seeds) | not reached (2 of 2 seeds) |"
    # the curves are kept next to results.json: the table can be made again without the run folders
    import shutil

    shutil.rmtree(tmp_path / "runs")
    assert convergence.main([str(study), "--baseline", "base", "--fractions", "0.5", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert convergence.main([str(study), "--baseline", "nope"]) == 2
