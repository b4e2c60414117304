"""Where the rank budget went: the final rank of every layer, for the schedules that change it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.adapter_files import CONFIG_FILE, final_ranks

Row = dict[str, Any]


def _adapter_config(row: Row) -> dict[str, Any] | None:
    path = Path(row.get("run_dir") or "") / "adapter" / CONFIG_FILE
    return json.loads(path.read_text()) if row.get("status") == "ok" and path.is_file() else None


def rank_table(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """``{run: {layer: mean final rank over seeds}}`` for the runs whose schedule changes ranks."""
    per_run: dict[str, list[dict[str, int]]] = {}
    for row in rows:
        config = _adapter_config(row)
        if config is not None and config["method"].get("schedule", "fixed") != "fixed":
            per_run.setdefault(row["run"], []).append(final_ranks(config))
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
