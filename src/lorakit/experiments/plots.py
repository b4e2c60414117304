"""Figures of a comparison: loss curves, per-metric bars and the λ (lr_ratio) sweep.

Every figure shows the spread over seeds next to the mean, because differences between
LoRA-family methods are often of the size of seed noise and a bare mean hides that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..evaluate.metrics import lower_is_better  # noqa: E402
from ..optimizers.lora_plus import DEFAULT_LR_RATIO_MODE  # noqa: E402
from .stats import decimals, is_reference  # noqa: E402

Row = dict[str, Any]
DPI = 150


def _color(index: int) -> Any:
    """tab10's colours for the first 10 runs, then their light variants (tab20's odd entries): 20
    distinct colours, the first ten as in every other plot."""
    index %= 20
    return plt.get_cmap("tab20")(2 * index if index < 10 else 2 * (index - 10) + 1)


def _save(fig: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def _direction(metric: str) -> str:
    return "↓ lower is better" if lower_is_better(metric) else "↑ higher is better"


# -- loss curves -----------------------------------------------------------------------------
def _aligned(seeds: Sequence[Sequence[Row]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values[seed, step]) on the steps that every seed with ``key`` records logged."""
    series = []
    for records in seeds:
        points = {int(r["step"]): float(r[key]) for r in records if r.get(key) is not None}
        if points:
            series.append(points)
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    return np.array(steps), np.array([[s[step] for step in steps] for s in series])


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the step axis; the window shrinks at the ends (no lag)."""
    if window <= 1:
        return values
    kernel = np.ones(window)
    pad = window // 2
    sums = np.apply_along_axis(lambda v: np.convolve(np.pad(v, pad), kernel, "valid"), -1, values)
    counts = np.convolve(np.pad(np.ones(values.shape[-1]), pad), kernel, "valid")
    return sums / counts


def _window(points: int) -> int:
    """An odd smoothing window of about 1/12 of the curve: per-batch noise goes, the trend stays."""
    window = min(51, max(1, round(points / 12)))
    return window if window % 2 else window + 1


def plot_loss_curves(curves: dict[str, list[list[Row]]], path: Path) -> None:
    """Training and eval loss vs step: per run the mean over seeds and a min–max band.

    Training loss is per batch and noisy, so each seed's curve is smoothed with a centred
    moving average first (the title says over how many logged points).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    panels = (("loss", "Training loss"), ("eval_loss", "Eval loss"))
    handles: dict[str, Any] = {}
    for ax, (key, title) in zip(axes, panels):
        windows = set()
        for index, (run, seeds) in enumerate(curves.items()):
            aligned = _aligned(seeds, key)
            if aligned is None:
                continue
            steps, values = aligned
            if key == "loss":
                windows.add(_window(len(steps)))
                values = _smooth(values, _window(len(steps)))
            color = _color(index)
            sparse = len(steps) <= 30  # eval points are few: mark each one
            (line,) = ax.plot(steps, values.mean(axis=0), color=color, lw=1.6,
                              marker="o" if sparse else None, ms=4,
                              label=f"{run} (n={values.shape[0]})")
            if values.shape[0] > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color,
                                alpha=0.18, lw=0)
            handles.setdefault(run, line)
        smoothing = f"moving avg. of {max(windows)} points, " if windows and max(windows) > 1 else ""
        ax.set_title(f"{title} ({smoothing}mean over seeds; band: min–max)", fontsize=10.5)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not ax.has_data():
            ax.text(0.5, 0.5, f"no {key} records", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    if handles:
        fig.legend(list(handles.values()), [h.get_label() for h in handles.values()],
                   loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    _save(fig, path)


# -- metric bars -----------------------------------------------------------------------------
def _limits(means: np.ndarray, stds: np.ndarray) -> tuple[tuple[float, float], bool]:
    """y-limits and whether they are zoomed (not starting at 0) to make small gaps visible."""
    low, high = float((means - stds).min()), float((means + stds).max())
    span = high - low or max(abs(high) * 0.05, 1e-3)
    zoom = low > 0 and span < 0.5 * high
    bottom = low - 0.4 * span if zoom else min(0.0, low - 0.1 * span)
    return (bottom, high + 0.45 * span), zoom


def plot_metric_bars(aggregates: Sequence[Row], metrics: Sequence[str], path: Path) -> None:
    """One panel per metric, one bar per compared run (mean ± std over seeds), values on bars.

    The untrained reference row is left out: its values are far from the trained runs' and
    would squash the zoomed axes that make their differences visible.
    """
    runs = [a for a in aggregates if not is_reference(a) and a.get("n")]
    metrics = list(metrics) or ["(none)"]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    width = max(4.2, 0.75 * len(runs) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 4.2 * nrows + 0.6),
                             layout="constrained", squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        shown = [(i, a) for i, a in enumerate(runs) if a.get(f"{metric}_mean") is not None]
        if not shown:
            ax.set_title(metric)
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        means = np.array([a[f"{metric}_mean"] for _, a in shown])
        stds = np.array([a.get(f"{metric}_std") or 0.0 for _, a in shown])
        x = np.arange(len(shown))
        # best as printed: means equal to the shown decimals are tied and all marked
        rounded = np.round(means, decimals(metric))
        best = set(np.flatnonzero(rounded == (rounded.min() if lower_is_better(metric) else rounded.max())))
        bars = ax.bar(x, means, yerr=stds, capsize=4, color=[_color(i) for i, _ in shown],
                      edgecolor="black", linewidth=[2.0 if j in best else 0.5 for j in x],
                      error_kw={"elinewidth": 1.2})
        (bottom, top), zoom = _limits(means, stds)
        ax.set_ylim(bottom, top)
        offset = 0.03 * (top - bottom)
        # the figure widens with the number of runs, so a horizontal label always fits its bar
        for j, (bar, mean, std) in enumerate(zip(bars, means, stds)):
            ax.text(bar.get_x() + bar.get_width() / 2, mean + std + offset,
                    f"{mean:.{decimals(metric)}f}", ha="center", va="bottom", fontsize=8,
                    fontweight="bold" if j in best else "normal")
        ax.set_xticks(x, [a["run"] for _, a in shown], rotation=30, ha="right", fontsize=8.5)
        ax.set_title(f"{metric}  ({_direction(metric)})", fontsize=10.5)
        ax.set_ylabel(f"{metric} — axis zoomed, not from 0" if zoom else metric,
                      fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Mean ± std over seeds per run (thick outline: best mean)", fontsize=12)
    _save(fig, path)


# -- λ sweep ---------------------------------------------------------------------------------
def plot_lambda_sweep(aggregates: Sequence[Row], path: Path, metric: str = "eval_loss",
                      baseline: str | None = None) -> bool:
    """``metric`` (mean ± std) vs λ (``lr_ratio``) on a log₂ axis, one line per method and
    ``lr_ratio_mode`` (a symmetric λ is an effective ratio η_B/η_A of λ², so the modes get
    separate lines).

    Draws the ``baseline`` run as a dashed line with its ±std band. Returns False, writing
    nothing, when fewer than two distinct λ values have a result.
    """
    points = [a for a in aggregates if not is_reference(a) and a.get("lr_ratio") is not None
              and a.get(f"{metric}_mean") is not None]
    lambdas = sorted({float(a["lr_ratio"]) for a in points})
    if len(lambdas) < 2:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    def line(a: Row) -> tuple[Any, str]:
        return a.get("method"), a.get("lr_ratio_mode", DEFAULT_LR_RATIO_MODE)

    lines = list(dict.fromkeys(line(a) for a in points))
    for index, (method, mode) in enumerate(lines):
        mine = sorted((a for a in points if line(a) == (method, mode)), key=lambda a: a["lr_ratio"])
        xs = np.array([float(a["lr_ratio"]) for a in mine])
        ys = np.array([a[f"{metric}_mean"] for a in mine])
        es = np.array([a.get(f"{metric}_std") or 0.0 for a in mine])
        ax.errorbar(xs, ys, yerr=es, color=_color(index), marker="o", capsize=4, lw=1.6,
                    label=str(method) if mode == DEFAULT_LR_RATIO_MODE else f"{method} ({mode}: η_B/η_A = λ²)")
        above = index % 2 == 0  # alternate sides, so lines that meet keep readable labels
        for x, y, e in zip(xs, ys, es):
            ax.annotate(f"{y:.{decimals(metric)}f}", (x, y + e if above else y - e),
                        textcoords="offset points", xytext=(0, 4 if above else -4), ha="center",
                        va="bottom" if above else "top", fontsize=8, color=_color(index))
    base = next((a for a in aggregates if a["run"] == baseline
                 and a.get(f"{metric}_mean") is not None), None)
    if base is not None:
        mean, std = base[f"{metric}_mean"], base.get(f"{metric}_std") or 0.0
        ax.axhline(mean, color="0.3", ls="--", lw=1.2, label=f"{baseline} (baseline, ±std band)")
        if std:
            ax.axhspan(mean - std, mean + std, color="0.5", alpha=0.12, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lambdas, [f"{v:g}" for v in lambdas])
    ax.minorticks_off()
    ax.margins(x=0.08, y=0.15)
    ax.set_xlabel("λ = lr_ratio (log₂ scale)")
    ax.set_ylabel(f"{metric} ({_direction(metric)})")
    ax.set_title(f"{metric} vs λ: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    _save(fig, path)
    return True


def plot_ranks(table: dict[str, dict[str, float]], path: Path) -> bool:
    """Final rank per layer (mean over seeds) for the runs whose schedule changes ranks.

    Layers named ``<block>.<module>`` (every transformer) are drawn as one heatmap per run, blocks
    across and module kinds down, so 120 layers stay readable; other names as grouped bars.
    Returns False, writing nothing, when no run changes ranks.
    """
    from .ranks import short_name

    if not table:
        return False
    layers = list(dict.fromkeys(name for ranks in table.values() for name in ranks))
    names = [short_name(n) for n in layers]
    cells = _block_grid(names)
    if cells is None:
        _rank_bars(table, layers, names, path)
    else:
        _rank_heatmaps(table, layers, cells, path)
    return True


def _block_grid(names: Sequence[str]) -> list[tuple[int, str]] | None:
    """(block, module kind) of every short name when each is a distinct ``<block>.<kind>``, else
    None (an encoder-decoder's two stacks share short names: their cells would overwrite each other)."""
    parts = [name.split(".", 1) for name in names]
    if len(set(names)) < len(names) or not all(len(p) == 2 and p[0].isdigit() for p in parts):
        return None
    return [(int(block), kind) for block, kind in parts]


def _rank_heatmaps(table: dict[str, dict[str, float]], layers: Sequence[str],
                   positions: Sequence[tuple[int, str]], path: Path) -> None:
    blocks = sorted({block for block, _ in positions})
    kinds = list(dict.fromkeys(kind for _, kind in positions))
    rows = [(kinds.index(kind), blocks.index(block)) for block, kind in positions]
    top = max((r for ranks in table.values() for r in ranks.values()), default=1.0) or 1.0
    fig, axes = plt.subplots(len(table), 1, squeeze=False, layout="constrained",
                             figsize=(max(7.5, 0.32 * len(blocks) + 2.5), 0.9 + len(table) * (0.3 * len(kinds) + 0.75)))
    for ax, (run, ranks) in zip(axes[:, 0], table.items()):
        cells = np.full((len(kinds), len(blocks)), np.nan)
        for layer, cell in zip(layers, rows):
            cells[cell] = ranks.get(layer, 0)
        image = ax.imshow(cells, aspect="auto", cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
        ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
        ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
        ax.set_title(f"{run} (total {np.nansum(cells):g})", fontsize=9.5, loc="left")
    axes[-1, 0].set_xlabel("block (layer index)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="final rank (0 = removed)", shrink=0.9)
    fig.suptitle("Final rank per layer (mean over seeds)", fontsize=11)
    _save(fig, path)


def _rank_bars(table: dict[str, dict[str, float]], layers: Sequence[str], labels: Sequence[str],
               path: Path) -> None:
    width = 0.8 / len(table)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.28 * len(layers) * len(table) + 2), 4.8), layout="constrained")
    positions = np.arange(len(layers))
    for index, (run, ranks) in enumerate(table.items()):
        ax.bar(positions + (index - (len(table) - 1) / 2) * width, [ranks.get(n, 0) for n in layers], width,
               color=_color(index), label=f"{run} (total {sum(ranks.values()):g})")
    ax.set_xticks(positions, labels, rotation=90, fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("final rank (0 = removed)")
    ax.set_title("Final rank per layer (mean over seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(table), 4), fontsize=9)
    _save(fig, path)
