"""Print the cross-study summary table of docs/results/index.md from the studies' results.json.

Each column is one study's metric as mean ± std over seeds, with the paired difference against
the study's baseline marked when its two-sided paired t-test gives p < 0.05 (▲ better, ▼ worse);
the numbers come from the files alone, so the table can be regenerated and checked.

    python scripts/study_table.py docs/results/study_instruction:eval_loss docs/results/study_sst2:accuracy ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lorakit.evaluate.metrics import lower_is_better
from lorakit.experiments.stats import aggregate, paired_vs_baseline

SIGNIFICANT = 0.05


def column(folder: Path, metric: str, baseline: str) -> dict[str, str]:
    """Method → the table cell of ``metric`` in the study saved in ``folder``."""
    rows = [r for r in json.loads((folder / "results.json").read_text())["rows"] if r.get("seed") is not None]
    means = {a["run"]: a for a in aggregate(rows, [metric])}
    paired = paired_vs_baseline(rows, baseline, [metric])
    cells = {}
    for run, agg in means.items():
        if agg[f"{metric}_mean"] is None:
            cells[run] = "—"
            continue
        digits = 4 if abs(agg[f"{metric}_mean"]) < 10 else 2
        text = f"{agg[f'{metric}_mean']:.{digits}f} ± {agg[f'{metric}_std']:.{digits}f}"
        d = paired.get(run, {}).get(metric) or {}
        if d.get("p_value") is not None and d["p_value"] < SIGNIFICANT and d.get("mean_diff"):
            better = (d["mean_diff"] < 0) == lower_is_better(metric)
            text += " ▲" if better else " ▼"
        cells[run] = text
    return cells


def main(argv: list[str]) -> None:
    specs = [arg.split(":") for arg in argv]
    columns = [(f"{Path(folder).name} {metric}", column(Path(folder), metric, "lora")) for folder, metric in specs]
    runs = list(dict.fromkeys(run for _, cells in columns for run in cells))
    print("| method | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for run in runs:
        print(f"| {run} | " + " | ".join(cells.get(run, "—") for _, cells in columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
