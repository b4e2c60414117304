"""Training time of the rank schedules against plain LoRA, and AdaLoRA against PEFT (run by hand).

One process, copies of one randomly initialised Llama (``forms_speed.MODELS``), every run
adapting all seven projections of every block at rank ``--rank`` with dropout 0, on the same
random batches, for ``--steps`` optimizer steps, after ``--warmup`` untimed steps of a throwaway
LoRA run per library. Timed: every step (forward, backward, optimizer step with the schedule's
hooks, zero_grad), CUDA synchronised. Reported: the total over all steps, reallocations included,
and its ratio to lorakit's plain LoRA. ``--repeats`` rounds of all runs, each round in a rotated
order; a ratio is taken within a round (against that round's LoRA run) and the median over rounds
is reported with its range, so that a slow phase of a shared machine does not decide a comparison.

Schedule settings scale with ``--steps``: WeightLoRA selects during the first third (K = n/2),
SimplexLoRA reallocates 3 times, every quarter, LoRA-drop selects after the first quarter
(threshold 0.9), AdaLoRA (target rank r/2, t_init = 10 %, t_final = 20 %, ΔT = 1) is run against
PEFT's ``AdaLoraConfig`` with the same budget, whose ``update_and_allocate`` is called after
backward as PEFT requires.

    python benchmarks/schedules_speed.py --repeats 5            # CPU, SmolLM2-135M's shapes
    python benchmarks/schedules_speed.py --model tinyllama --batch 8 --seq 512 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model

import lorakit
from forms_speed import MODELS, TARGETS, prepare, synchronize
from lorakit.io.adapter_files import final_ranks


@dataclass
class Row:
    run: str
    library: str
    total_s: float  # median over rounds
    ratio_to_lora: float  # median over rounds of total / lorakit LoRA's total in the same round
    ratio_min: float
    ratio_max: float
    final_total_rank: int | None
    totals_s: list[float]  # one per round
    step_times_ms: list[list[float]]  # one list per round


def lorakit_setup(method: str, args: argparse.Namespace) -> Callable[[Any], tuple[Any, Any, Callable[[int], None]]]:
    steps = args.steps
    options: dict[str, dict[str, Any]] = {
        "lora": {},
        "weight_lora": {"selection_steps": max(1, steps // 3)},
        "weight_lora_plus": {"selection_steps": max(1, steps // 3)},
        "simplex_lora": {"simplex_every": max(1, steps // 4), "simplex_reallocations": 3},
        "lora_drop": {"drop_warmup_steps": max(1, steps // 4), "drop_top_n": None},
        "adalora": {"adalora_total_steps": steps, "adalora_t_init": steps // 10, "adalora_t_final": steps // 5,
                    "adalora_target_rank": max(1, args.rank // 2)},
    }

    def setup(model):
        adapter = lorakit.attach(model, method, rank=args.rank, alpha=args.alpha, targets=TARGETS, dropout=0.0,
                                 **options[method])
        optimizer = adapter.optimizer(lr=1e-4)
        ranks = lambda: sum(final_ranks(adapter.config()).values())  # noqa: E731
        return model, optimizer, (lambda step: None), ranks
    return setup


def peft_setup(method: str, args: argparse.Namespace):
    steps = args.steps

    def setup(model):
        if method == "adalora":
            config = AdaLoraConfig(init_r=args.rank, target_r=max(1, args.rank // 2), lora_alpha=args.alpha,
                                   target_modules=TARGETS, lora_dropout=0.0, tinit=steps // 10,
                                   tfinal=steps // 5, deltaT=1, total_step=steps)
        else:
            config = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=TARGETS, lora_dropout=0.0)
        model = get_peft_model(model, config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        after_backward = (lambda step: model.base_model.update_and_allocate(step)) if method == "adalora" \
            else (lambda step: None)
        return model, optimizer, after_backward, (lambda: None)
    return setup


def run(label: str, library: str, setup, base, batches, args, device) -> tuple[float, list[float], int | None]:
    model, optimizer, after_backward, total_rank = setup(copy.deepcopy(base))
    model.train()
    times = []
    for step in range(args.steps):
        batch = batches[step % len(batches)]
        synchronize(device)
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        after_backward(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    total = sum(times) / 1e3
    rank = total_rank()
    print(f"  {label:17s} {library:8s} total {total:8.2f} s" + (f"  final total rank {rank}" if rank else ""),
          flush=True)
    del model, optimizer
    return total, times, rank


RUNS = ("lora", "weight_lora", "weight_lora_plus", "simplex_lora", "lora_drop", "adalora",
        "peft:lora", "peft:adalora")


def rounds(plan: list[Any], repeats: int) -> list[list[Any]]:
    """``repeats`` rounds of ``plan``, round ``k`` rotated by ``k``: no run always goes first, and a
    slow phase of the machine falls on different runs in different rounds."""
    return [plan[k % len(plan):] + plan[:k % len(plan)] for k in range(repeats)]


def paired_ratios(totals: dict[tuple[str, str], list[float]], reference: tuple[str, str]
                  ) -> dict[tuple[str, str], list[float]]:
    """Per round, every run's total over ``reference``'s total of the same round."""
    return {key: [t / r for t, r in zip(values, totals[reference], strict=True)] for key, values in totals.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed runs")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all runs, interleaved")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                        help="runs to time (lorakit's lora, the reference, is always included)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/schedules_speed.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    device, base, batches, meta = prepare(args)
    # untimed: the process's first steps pay for kernel selection and allocator growth, which
    # would otherwise land on whichever run goes first
    warmup = argparse.Namespace(**{**vars(args), "steps": args.warmup})
    for setup in (lorakit_setup("lora", warmup), peft_setup("lora", warmup)):
        run("(warm-up)", "", setup, base, batches, warmup, device)
    chosen = ["lora"] + [r for r in args.runs if r != "lora"]
    plan = [(r.split(":")[-1], "peft" if r.startswith("peft:") else "lorakit") for r in chosen]
    totals: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    steps: dict[tuple[str, str], list[list[float]]] = {key: [] for key in plan}
    ranks: dict[tuple[str, str], int | None] = {}
    for number, order in enumerate(rounds(plan, args.repeats), 1):
        print(f"round {number}/{args.repeats}", flush=True)
        for label, library in order:
            setup = (peft_setup if library == "peft" else lorakit_setup)(label, args)
            total, times, rank = run(label, library, setup, base, batches, args, device)
            totals[(label, library)].append(total)
            steps[(label, library)].append(times)
            ranks[(label, library)] = rank
    ratios = paired_ratios(totals, ("lora", "lorakit"))
    rows = [Row(label, library, statistics.median(totals[key]), statistics.median(ratios[key]),
                min(ratios[key]), max(ratios[key]), ranks[key], totals[key], steps[key])
            for key in plan for label, library in [key]]
    print(f"\n{args.repeats} rounds; medians, ratio range over rounds in brackets")
    print("| run | library | total s | × lorakit LoRA | final total rank |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r.run} | {r.library} | {r.total_s:.2f} | {r.ratio_to_lora:.3f} "
              f"[{r.ratio_min:.3f}, {r.ratio_max:.3f}] | {r.final_total_rank or '—'} |")
    summary: dict[str, Any] = {"meta": meta, "rows": [asdict(r) for r in rows]}
    if ("adalora", "lorakit") in totals and ("adalora", "peft") in totals:
        adalora = paired_ratios(totals, ("adalora", "peft"))[("adalora", "lorakit")]
        summary["adalora_lorakit_over_peft"] = {"median": statistics.median(adalora), "per_round": adalora}
        print(f"\nAdaLoRA: lorakit / PEFT = {statistics.median(adalora):.3f} "
              f"[{min(adalora):.3f}, {max(adalora):.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
