"""Statistics over seeds: per-run mean and spread, and paired differences against a baseline.

Rows are the per-(run, seed) result dicts of ``lorakit compare``; only rows with
``status == "ok"`` carry metrics. Seeds are the unit of replication: two runs trained with the
same seed see the same data order and the same random init draws, so comparing them seed by
seed (a paired test) removes the shared noise that an unpaired comparison would count twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import unknown
from ..evaluate.metrics import GENERATION_METRICS, LOSS_METRICS, TEACHER_FORCED_METRICS, unprefixed
from ..optimizers.lora_plus import DEFAULT_LR_RATIO_MODE

KNOWN_METRICS = LOSS_METRICS + GENERATION_METRICS + TEACHER_FORCED_METRICS
# decimals to print per metric: seed-to-seed differences stay visible, noise digits do not
DECIMALS = {"eval_loss": 4, "eval_ppl": 3, "bleu": 2, "tf_bleu": 2}
REFERENCE_METHOD = "none"  # the untrained base model's row: a reference, not a compared run

Row = dict[str, Any]


def decimals(metric: str) -> int:
    """How many decimals to print ``metric`` with (BLEU is on a 0–100 scale, ROUGE on 0–1)."""
    return DECIMALS.get(unprefixed(metric), 4)


def is_reference(row: Row) -> bool:
    """Whether ``row`` (a result row or an aggregate) is the untrained base-model reference."""
    return row.get("method") == REFERENCE_METHOD


def run_names(rows: Iterable[Row]) -> list[str]:
    """The run names in order of first appearance."""
    return list(dict.fromkeys(row["run"] for row in rows))


def _value(row: Row, metric: str) -> float | None:
    """The metric of an ok row as a float, or None where it is missing or not a number."""
    if row.get("status") != "ok":
        return None
    value = row.get(metric)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); 0.0 for one value, where there is no spread to see."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(rows: Sequence[Row], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per run, in first-appearance order: seed counts and ``<metric>_mean`` / ``<metric>_std``.

    ``n`` counts ok seeds, ``failed`` the others. Mean and std are over the ok seeds that report
    the metric; both are None when none does.
    """
    out = []
    for name in run_names(rows):
        group = [row for row in rows if row["run"] == name]
        ok = [row for row in group if row.get("status") == "ok"]
        entry: dict[str, Any] = {"run": name, "method": group[0].get("method"), "lr": group[0].get("lr"),
                                 "lr_ratio": group[0].get("lr_ratio"),
                                 "lr_ratio_mode": group[0].get("lr_ratio_mode", DEFAULT_LR_RATIO_MODE),
                                 "n": len(ok), "failed": len(group) - len(ok)}
        for metric in metrics:
            values = [v for v in (_value(row, metric) for row in ok) if v is not None]
            entry[f"{metric}_mean"] = _mean(values) if values else None
            entry[f"{metric}_std"] = _std(values) if values else None
        out.append(entry)
    return out


def _by_seed(rows: Sequence[Row], name: str) -> dict[Any, Row]:
    return {row.get("seed"): row for row in rows if row["run"] == name and row.get("status") == "ok"}


def _constant(diffs: Sequence[float]) -> bool:
    """All differences equal up to float rounding: the t statistic would be 0/0 or ±inf."""
    scale = max(1.0, max(abs(d) for d in diffs))
    return max(diffs) - min(diffs) <= 1e-12 * scale


def paired_difference(run_values: Sequence[float], base_values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean_diff", "std_diff", "p_value"}`` of ``run − base`` over aligned values.

    ``p_value`` is the two-sided paired t-test's; None with fewer than two pairs or when every
    difference is the same (no variance, so the test is undefined).
    """
    diffs = [r - b for r, b in zip(run_values, base_values, strict=True)]
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean_diff": None, "std_diff": None, "p_value": None}
    p_value = None
    if n >= 2 and not _constant(diffs):
        from scipy.stats import ttest_rel  # only the paired test needs scipy

        p_value = float(ttest_rel(run_values, base_values).pvalue)
    return {"n": n, "mean_diff": _mean(diffs), "std_diff": _std(diffs), "p_value": p_value}


def paired_vs_baseline(rows: Sequence[Row], baseline: str,
                       metrics: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """For each run other than ``baseline``: metric → paired difference (run − baseline).

    Pairs are the seeds that are ok in both runs and report the metric in both. An unknown
    ``baseline`` raises ``LorakitError``.
    """
    names = run_names(rows)
    if baseline not in names:
        raise unknown("baseline run", baseline, names)
    base = _by_seed(rows, baseline)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        if name == baseline:
            continue
        mine = _by_seed(rows, name)
        seeds = [seed for seed in mine if seed in base]
        out[name] = {}
        for metric in metrics:
            pairs = [(_value(mine[s], metric), _value(base[s], metric)) for s in seeds]
            pairs = [(r, b) for r, b in pairs if r is not None and b is not None]
            out[name][metric] = paired_difference([r for r, _ in pairs], [b for _, b in pairs])
    return out
