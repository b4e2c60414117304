"""Where the rank budget went: the final rank of every layer, for the schedules that change it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Row = dict[str, Any]


def rank_table(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """``{run: {layer: mean final rank over seeds}}`` for the runs whose schedule changes ranks,
    from each finished run's ``final_ranks`` (its summary's, which outlives its adapter folder)."""
    per_run: dict[str, list[dict[str, int]]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("final_ranks"):
            per_run.setdefault(row["run"], []).append(row["final_ranks"])
    table = {}
    for run, seeds in per_run.items():
        layers = sorted({name for ranks in seeds for name in ranks}, key=_layer_order)
        table[run] = {name: float(np.mean([ranks.get(name, 0) for ranks in seeds])) for name in layers}
    return table


def _layer_order(name: str) -> tuple[Any, ...]:
    """Sort ``model.layers.10.self_attn.q_proj`` after ``model.layers.9...``."""
    return tuple(int(part) if part.isdigit() else part for part in name.split("."))


def short_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` → ``3.q_proj``."""
    parts = name.split(".")
    numbers = [p for p in parts if p.isdigit()]
    return f"{numbers[-1]}.{parts[-1]}" if numbers else parts[-1]


def rank_lines(table: dict[str, dict[str, float]]) -> list[str]:
    """The report's Markdown section (empty when no run changes ranks)."""
    if not table:
        return []
    runs = list(table)
    layers = sorted({name for ranks in table.values() for name in ranks}, key=_layer_order)
    fmt = lambda v: f"{v:g}" if float(v).is_integer() else f"{v:.1f}"  # noqa: E731
    lines = ["## Final rank per layer", "",
             "For the runs whose schedule changes ranks: the rank each layer ended with (mean over seeds; "
             "0 = adapter removed; AdaLoRA: kept triplets).", "",
             "| layer | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for layer in layers:
        lines.append(f"| {short_name(layer)} | " + " | ".join(fmt(table[run].get(layer, 0)) for run in runs) + " |")
    lines.append("| **total** | " + " | ".join(fmt(sum(table[run].values())) for run in runs) + " |")
    return lines + [""]
