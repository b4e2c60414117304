"""The files of a comparison: ``results.json``, ``results.csv``, ``summary.csv`` and ``report.md``.

Pure functions of the result rows and their statistics (see ``stats``), so a report can be
rewritten from ``results.json`` without training anything again.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate.metrics import lower_is_better
from ..io.atomic import write_text_atomic
from ..io.json_text import json_text
from .stats import KNOWN_METRICS, aggregate, decimals, is_reference

LEADING_COLUMNS = ("run", "method", "seed", "status")
SIGNIFICANCE = 0.05

Row = dict[str, Any]


# -- machine-readable results --------------------------------------------------------------
def _columns(records: Sequence[Row], leading: Sequence[str]) -> list[str]:
    keys = list(dict.fromkeys(k for record in records for k in record))
    first = [k for k in leading if k in keys]
    return first + [k for k in keys if k not in first]


def csv_text(records: Sequence[Row], columns: Sequence[str]) -> str:
    """``records`` as CSV text with a header of ``columns`` (lists and mappings as JSON, None empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        cells = []
        for column in columns:
            value = record.get(column)
            if isinstance(value, (dict, list, tuple)):
                value = json_text(value)
            cells.append("" if value is None else value)
        writer.writerow(cells)
    return buffer.getvalue()


def write_results(out_dir: Path, rows: Sequence[Row], aggregates: Sequence[Row], tuned: Sequence[Row] = ()) -> None:
    """Write ``results.json`` (rows, aggregates and, for a tuned comparison, what each run's search
    found), ``results.csv`` (one line per run × seed) and ``summary.csv`` (one line per run)."""
    out_dir = Path(out_dir)
    payload = {"rows": list(rows), "aggregates": list(aggregates), **({"tuning": list(tuned)} if tuned else {})}
    write_text_atomic(out_dir / "results.json", json_text(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    columns = _columns(rows, LEADING_COLUMNS + KNOWN_METRICS)
    write_text_atomic(out_dir / "results.csv", csv_text(rows, columns))
    write_text_atomic(out_dir / "summary.csv", csv_text(aggregates, _columns(aggregates, ())))


# -- number formatting ---------------------------------------------------------------------
def _fmt(metric: str, value: float, sign: bool = False) -> str:
    return f"{value:{'+' if sign else ''}.{decimals(metric)}f}"


def format_p(p: float | None) -> str:
    if p is None:
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


def _cell_text(text: Any) -> str:
    """One table cell: a single line with no column separators."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


# -- report sections -----------------------------------------------------------------------
def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def _setup(meta: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in meta.items():
        if key == "title" or value is None:
            continue
        if key == "command":
            text = f"`{value}`"
        elif key == "duration" and isinstance(value, (int, float)):
            text = _duration(value)
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            text = ", ".join(str(v) for v in value)
        else:
            text = str(value)
        lines.append(f"- **{key}**: {text}")
    return lines


def _best(aggregates: Sequence[Row], metric: str) -> float | None:
    """The best rounded mean among the compared runs; None when fewer than two have one."""
    means = [round(a[f"{metric}_mean"], decimals(metric)) for a in aggregates
             if not is_reference(a) and a.get(f"{metric}_mean") is not None]
    if len(means) < 2:
        return None
    return min(means) if lower_is_better(metric) else max(means)


def _first_error(rows: Sequence[Row], run: str) -> str:
    errors = [r.get("error") for r in rows if r["run"] == run and r.get("status") != "ok"]
    text = _cell_text(next((e for e in errors if e), "unknown error"))
    return text if len(text) <= 160 else text[:157] + "..."


def _main_table(rows: Sequence[Row], aggregates: Sequence[Row], metrics: Sequence[str],
                baseline: str | None) -> list[str]:
    header = ["run", "seeds"] + [f"{m} {_arrow(m)}" for m in metrics]
    best = {m: _best(aggregates, m) for m in metrics}
    lines = []
    ordered = [a for a in aggregates if not is_reference(a)] + [a for a in aggregates if is_reference(a)]
    for agg in ordered:
        name = _cell_text(agg["run"])
        name = f"_{name}_ (untrained reference)" if is_reference(agg) else name
        name += " (baseline)" if agg["run"] == baseline else ""
        seeds = str(agg["n"]) + (f" ({agg['failed']} failed)" if agg["failed"] else "")
        if agg["n"] == 0:
            lines.append([name, seeds, f"failed: {_first_error(rows, agg['run'])}"]
                         + [""] * (len(metrics) - 1))
            continue
        cells = []
        for m in metrics:
            mean, std = agg.get(f"{m}_mean"), agg.get(f"{m}_std")
            if mean is None:
                cells.append("—")
                continue
            text = _fmt(m, mean) if agg["n"] < 2 else f"{_fmt(m, mean)} ± {_fmt(m, std)}"
            is_best = not is_reference(agg) and round(mean, decimals(m)) == best[m]
            cells.append(f"**{text}**" if is_best else text)
        lines.append([name, seeds] + cells)
    return _table(header, lines)


def _failures(rows: Sequence[Row]) -> list[str]:
    return [f"- {_cell_text(r['run'])}, seed {r.get('seed')}: {_cell_text(r.get('error') or 'unknown error')}"
            for r in rows if r.get("status") != "ok"]


def _paired_table(paired: dict[str, dict[str, Row]], metrics: Sequence[str]) -> list[str]:
    header = ["run", "paired seeds"] + [f"Δ {m} {_arrow(m)}" for m in metrics]
    lines = []
    for name, by_metric in paired.items():
        cells = []
        for m in metrics:
            d = by_metric.get(m) or {"n": 0}
            if not d["n"]:
                cells.append("—")
                continue
            text = (f"{_fmt(m, d['mean_diff'], sign=True)} ± {_fmt(m, d['std_diff'])} "
                    f"({format_p(d['p_value'])})")
            significant = d["p_value"] is not None and d["p_value"] < SIGNIFICANCE
            cells.append(f"**{text}**" if significant else text)
        n = max((d.get("n", 0) for d in by_metric.values()), default=0)
        lines.append([_cell_text(name), str(n)] + cells)
    return _table(header, lines)


def verdict(name: str, baseline: str, metric: str, d: Row) -> str:
    """One plain-language sentence: does ``name`` beat ``baseline`` on ``metric`` beyond seed noise?"""
    if not d.get("n"):
        return f"**{name}** has no finished seed in common with {baseline}, so it cannot be compared."
    delta = f"Δ {metric} = {_fmt(metric, d['mean_diff'], sign=True)}"
    if d["n"] < 2:
        return (f"**{name}**: {delta} on a single paired seed; one seed cannot separate a difference "
                f"from seed noise.")
    spread = f"{delta} ± {_fmt(metric, d['std_diff'])} over {d['n']} seeds"
    if d["p_value"] is None:
        return (f"**{name}**: {delta} on each of {d['n']} seeds; with no spread the t-test is "
                f"undefined, so this is not a significance result.")
    better = d["mean_diff"] < 0 if lower_is_better(metric) else d["mean_diff"] > 0
    if d["p_value"] < SIGNIFICANCE:
        how = "beats" if better else "is worse than"
        return (f"**{name}** {how} {baseline} on {metric} beyond seed noise "
                f"({spread}, {format_p(d['p_value'])}).")
    return (f"**{name}** does not differ from {baseline} on {metric} beyond seed noise "
            f"({spread}, {format_p(d['p_value'])}).")


def resource_lines(aggregates: Sequence[Row], columns: Sequence[str]) -> list[str]:
    """A Markdown table of what each run cost (mean ± std over its seeds), for the columns that
    some run reports; ``[]`` when none does."""
    shown = [c for c in columns if any(a.get(f"{c}_mean") is not None for a in aggregates)]
    runs = [a for a in aggregates if not is_reference(a) and a["n"]]
    if not shown or not runs:
        return []
    def cell(agg: Row, column: str) -> str:
        mean, std = agg.get(f"{column}_mean"), agg.get(f"{column}_std")
        if mean is None:
            return "—"
        digits = 0 if column == "trainable_parameters" else 3
        return f"{mean:,.{digits}f}" + (f" ± {std:,.{digits}f}" if agg["n"] > 1 and std else "")
    lines = _table(["run", *shown], [[_cell_text(a["run"]), *(cell(a, c) for c in shown)] for a in runs])
    return ["## Resources", "", "Per run, mean ± std over seeds: trainable parameters, seconds per optimizer step "
            "(without evaluation), MiB of trained parameters + gradients + optimizer state, and (CUDA) the "
            "allocator's peak.", "", *lines, ""]


def _paired_section(others: dict[str, dict[str, Row]], metrics: list[str], baseline: str) -> list[str]:
    """The paired differences of every run against ``baseline``, with a verdict on the headline metric."""
    headline = "eval_loss" if "eval_loss" in metrics else metrics[0]
    lines = [f"## Paired difference vs {baseline}", "",
             f"Per seed, run − {baseline}, on the seeds both finished: mean ± standard deviation "
             f"of the differences and the two-sided paired t-test's p-value; **bold**: "
             f"p < {SIGNIFICANCE}.", ""]
    if not others:
        return lines + ["No other run to compare.", ""]
    lines += _paired_table(others, metrics) + [""]
    lines += [f"- {verdict(name, baseline, headline, by_metric.get(headline) or {})}"
              for name, by_metric in others.items()]
    return lines + ["", "With few seeds the test has little power: no difference beyond seed noise "
                    "is not evidence that two methods are equal.", ""]


def write_report(out_dir: Path, rows: Sequence[Row], aggregates: Sequence[Row],
                 paired: dict[str, dict[str, Row]] | None, metrics: Sequence[str],
                 baseline: str | None, plots: Sequence[str], meta: dict[str, Any],
                 sections: Sequence[str] = ()) -> Path:
    """Write ``report.md`` to ``out_dir`` and return its path; ``sections``: extra Markdown lines
    placed before the plots (the final ranks per layer)."""
    out_dir = Path(out_dir)
    metrics = list(metrics)
    # a reference row passed only in ``rows`` (not aggregated with the runs) still gets its line
    known = {a["run"] for a in aggregates}
    extra = [r for r in rows if is_reference(r) and r["run"] not in known]
    aggregates = list(aggregates) + aggregate(extra, metrics)
    lines = [f"# {meta.get('title', 'lorakit compare')}", ""]
    setup = _setup(meta)
    if setup:
        lines += ["## Setup", "", *setup, ""]

    lines += ["## Results", "",
              "Mean ± sample standard deviation over seeds (a single seed shows its value alone). "
              "↓ lower is better, ↑ higher is better; the best mean of each column is in **bold**.", ""]
    lines += _main_table(rows, aggregates, metrics, baseline) + [""]
    failures = _failures(rows)
    if failures:
        lines += ["Failed seeds (left out of the means):", "", *failures, ""]

    others = {k: v for k, v in (paired or {}).items()
              if not any(is_reference(a) and a["run"] == k for a in aggregates)}
    if baseline is not None and metrics:
        lines += _paired_section(others, metrics, baseline)
    lines += list(sections)
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            path = Path(plot)
            if path.is_absolute() and path.is_relative_to(out_dir):
                path = path.relative_to(out_dir)
            lines += [f"![{path.stem.replace('_', ' ')}]({path.as_posix()})", ""]

    report = out_dir / "report.md"
    write_text_atomic(report, "\n".join(lines).rstrip() + "\n")
    return report
