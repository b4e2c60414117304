"""How fast each run of a study converges: optimizer steps to reach a given eval loss.

For seed ``s`` the targets are fractions ``f`` of the baseline run's whole eval-loss drop,
``L_f(s) = L_0(s) − f · (L_0(s) − L_end(baseline, s))``, where ``L_0`` is the eval loss at step 0
(the untrained adapter) and ``L_end`` the baseline's final one. A run reaches ``L_f`` at the first
step where its eval-loss curve, linearly interpolated between evaluations, is at or below it;
runs are compared with the baseline seed by seed (mean ± std, paired t-test). ``f = 1`` asks for
the baseline's own final loss, so the baseline reaches it at its last step and a run that ends
above it shows as "not reached".

The curves are read from each run's ``metrics.jsonl`` (the run folders named in the study's
``results.json``) and saved next to it as ``eval_curves.json``, so the table can be made again
from the committed study alone.

    python scripts/convergence.py docs/results/study_lambda_sweep --baseline olora --fractions 0.5 0.9 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lorakit.experiments.report import format_p
from lorakit.experiments.stats import paired_difference
from lorakit.io.atomic import write_text_atomic

Curve = list[tuple[int, float]]
CURVES_FILE = "eval_curves.json"


def read_curves(study: Path) -> dict[str, dict[str, Curve]]:
    """Run → seed → [(step, eval_loss)], from the run folders, else from ``eval_curves.json``."""
    saved = study / CURVES_FILE
    rows = [r for r in json.loads((study / "results.json").read_text())["rows"]
            if r.get("seed") is not None and r.get("status") == "ok"]
    logs = [Path(r["run_dir"]) / "metrics.jsonl" for r in rows]
    if not all(log.is_file() for log in logs):
        return json.loads(saved.read_text())
    curves: dict[str, dict[str, Curve]] = {}
    for row, log in zip(rows, logs, strict=True):
        records = [json.loads(line) for line in log.read_text().splitlines() if line]
        points = {r["step"]: r["eval_loss"] for r in records if r.get("eval_loss") is not None}
        curves.setdefault(row["run"], {})[str(row["seed"])] = sorted(points.items())
    write_text_atomic(saved, json.dumps(curves, indent=1) + "\n")
    return curves


def steps_to(curve: Curve, target: float) -> float | None:
    """The first (interpolated) step at which ``curve`` is at or below ``target``; None if never."""
    for (step0, loss0), (step1, loss1) in zip(curve, curve[1:]):
        if loss0 <= target:
            return float(step0)
        if loss1 <= target:
            return step0 + (step1 - step0) * (loss0 - target) / (loss0 - loss1)
    return float(curve[-1][0]) if curve and curve[-1][1] <= target else None


def table(curves: dict[str, dict[str, Curve]], baseline: str, fractions: list[float]) -> str:
    """The Markdown table: per run and fraction, mean ± std steps and the paired difference."""
    base = curves[baseline]
    head = " | ".join(f"steps to {f:.0%} of {baseline}'s drop" for f in fractions)
    lines = [f"| run | {head} |", "|---" * (len(fractions) + 1) + "|"]
    for run, seeds in curves.items():
        cells = []
        for fraction in fractions:
            pairs = []
            for seed, curve in seeds.items():
                start, end = base[seed][0][1], base[seed][-1][1]
                target = start - fraction * (start - end)
                pairs.append((steps_to(curve, target), steps_to(base[seed], target)))
            cells.append(_cell(pairs, run == baseline))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(pairs: list[tuple[float | None, float | None]], is_baseline: bool) -> str:
    reached = [(r, b) for r, b in pairs if r is not None and b is not None]
    if len(reached) < len(pairs):
        return f"not reached ({len(pairs) - len(reached)} of {len(pairs)} seeds)"
    runs = [r for r, _ in reached]
    std = statistics.stdev(runs) if len(runs) > 1 else 0.0
    text = f"{statistics.mean(runs):.1f} ± {std:.1f}"
    if is_baseline:
        return text
    diff = paired_difference(runs, [b for _, b in reached])
    return text + f" ({diff['mean_diff']:+.1f}, {format_p(diff['p_value'])})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a compare output folder (results.json inside)")
    parser.add_argument("--baseline", required=True, help="the run whose eval-loss drop sets the targets")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.9, 1.0],
                        help="fractions of the baseline's drop (default: 0.5 0.9 1)")
    args = parser.parse_args(argv)
    curves = read_curves(args.study)
    if args.baseline not in curves:
        print(f"no run named {args.baseline!r} in {args.study}; runs: {', '.join(curves)}", file=sys.stderr)
        return 2
    print(table(curves, args.baseline, args.fractions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
