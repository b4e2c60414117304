"""OLoRA and PiSSA init time, lorakit vs PEFT, at TinyLlama-1.1B layer shapes (run by hand).

Both libraries run in one process on the same random float32 weight per shape. Only the init
is timed, including the base-weight rewrite ``W ← W − s·B A`` on both sides:

- lorakit: ``INITS.get(name).factors(W, r, s, generator, options)`` + ``subtract_product``;
- PEFT: ``LoraLayer.olora_init`` / ``pissa_init`` on a ``peft.tuners.lora.layer.Linear``
  created with ``init_lora_weights=False`` (so the constructor does no init of its own).

The copy of ``W`` each call starts from is made outside the timed region. Reported: median
milliseconds over ``--repeats`` after ``--warmup`` untimed calls, the speed-up, lorakit's
factors-only time (without the rewrite, for reference), and how far the two results are
apart (max |Δ| of ``s·B A`` and, where the factors are deterministic, of ``A`` and ``B``).
``pissa_niter`` runs from different random starts (PEFT: the global RNG, lorakit: its own
generator), so only the quality of the two approximations is comparable:
the share of the optimal rank-r energy ``‖s·B A‖²_F / Σ_{i≤r} σ_i²`` each one captures.

    python benchmarks/init_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import peft
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

import lorakit
from lorakit.core.terms import subtract_product
from lorakit.forms.lora import lora_scale
from lorakit.inits import INITS

# TinyLlama-1.1B: q/o_proj, k/v_proj (4 KV heads × 64), gate/up_proj, down_proj; (out, in).
TINYLLAMA_SHAPES = [(2048, 2048), (256, 2048), (5632, 2048), (2048, 5632)]
ADAPTER = "default"


@dataclass(frozen=True)
class Method:
    """One init as each library spells it."""

    label: str
    lorakit_init: str
    lorakit_options: dict[str, Any]
    peft_init: str
    deterministic: bool  # factors comparable entry by entry (no random start)


METHODS = [
    Method("olora", "olora", {}, "olora", True),
    Method("pissa", "pissa", {"pissa_niter": None}, "pissa", True),
    Method("pissa_niter_4", "pissa", {"pissa_niter": 4}, "pissa_niter_4", False),
]


@dataclass
class Row:
    shape: tuple[int, int]
    method: str
    lorakit_ms: float  # median, factors + base-weight rewrite (compared with PEFT)
    peft_ms: float
    lorakit_factors_ms: float  # median, factors only (for reference)
    speedup: float
    max_abs_product: float
    max_diff_product: float
    max_diff_factors: float | None
    max_diff_weight: float
    energy_lorakit: float | None
    energy_peft: float | None
    lorakit_times_ms: list[float]
    peft_times_ms: list[float]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(setup: Callable[[], Any], run: Callable[[Any], Any], repeats: int, warmup: int,
          device: torch.device) -> tuple[list[float], Any]:
    """Ms of each timed ``run(setup())`` (only ``run`` timed) and the last call's result."""
    times, result = [], None
    for i in range(warmup + repeats):
        state = setup()
        synchronize(device)
        start = time.perf_counter()
        result = run(state)
        synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times, result


def lorakit_factors(weight: torch.Tensor, method: Method, rank: int, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` from lorakit's registered init, with the generator an adapter would pass."""
    generator = torch.Generator(device=weight.device)
    generator.manual_seed(0)
    return INITS.get(method.lorakit_init).factors(weight, rank, scale, generator, method.lorakit_options)


def lorakit_init(weight: torch.Tensor, method: Method, rank: int, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, A, W')``: lorakit's factors and rewritten weight (``weight`` is changed in place)."""
    B, A = lorakit_factors(weight, method, rank, scale)
    subtract_product(weight, B, A, scale)
    return B, A, weight


def peft_layer(weight: torch.Tensor, rank: int, alpha: float) -> PeftLinear:
    """A PEFT LoRA ``Linear`` around an ``nn.Linear`` holding ``weight``, factors not yet initialised."""
    out_features, in_features = weight.shape
    base = nn.Linear(in_features, out_features, bias=False, device=weight.device)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=False)
    layer = PeftLinear(base, ADAPTER, config=config, r=rank, lora_alpha=alpha)
    return layer.to(weight.device)


def peft_init(layer: PeftLinear, method: Method) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, A, W')`` as PEFT computes them on ``layer`` (its base weight is rewritten)."""
    if method.peft_init == "olora":
        layer.olora_init(ADAPTER)
    else:
        layer.pissa_init(ADAPTER, method.peft_init)
    return layer.lora_B[ADAPTER].weight, layer.lora_A[ADAPTER].weight, layer.get_base_layer().weight


def max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max())


def bench_shape(shape: tuple[int, int], args: argparse.Namespace, device: torch.device,
                failures: list[dict[str, Any]]) -> list[Row]:
    """The rows of one shape; a method that raises (on either side) goes to ``failures``."""
    out_features, in_features = shape
    generator = torch.Generator().manual_seed(out_features * 100_003 + in_features)
    weight = (0.02 * torch.randn(out_features, in_features, generator=generator)).to(device)
    scale = lora_scale(args.alpha, args.rank, rslora=False)
    top_energy = float((torch.linalg.svdvals(weight.double())[: args.rank] ** 2).sum())
    layer = peft_layer(weight, args.rank, args.alpha)

    def reset_peft() -> PeftLinear:
        layer.get_base_layer().weight.data = weight.clone()
        torch.manual_seed(0)  # PEFT's pissa_niter draws its random start from the global RNG
        return layer

    def energy(product: torch.Tensor) -> float:
        return float((product.double() ** 2).sum()) / top_energy

    def compare(method: Method) -> Row:
        ours_times, (B1, A1, W1) = timed(
            weight.clone, lambda w: lorakit_init(w, method, args.rank, scale), args.repeats, args.warmup, device)
        theirs_times, (B2, A2, W2) = timed(
            reset_peft, lambda lay: peft_init(lay, method), args.repeats, args.warmup, device)
        factors_times, _ = timed(
            lambda: weight, lambda w: lorakit_factors(w, method, args.rank, scale), args.repeats, args.warmup, device)
        ours_ms, theirs_ms = statistics.median(ours_times), statistics.median(theirs_times)
        with torch.no_grad():
            P1, P2 = scale * (B1 @ A1), scale * (B2 @ A2)
            spectral = method.label != "olora"  # OLoRA's B A is no best approximation
            return Row(
                shape=shape, method=method.label, lorakit_ms=ours_ms, peft_ms=theirs_ms,
                lorakit_factors_ms=statistics.median(factors_times),
                speedup=theirs_ms / ours_ms, max_abs_product=max_abs(P1),
                max_diff_product=max_abs(P1 - P2),
                max_diff_factors=max(max_abs(A1 - A2), max_abs(B1 - B2)) if method.deterministic else None,
                max_diff_weight=max_abs(W1 - W2),
                energy_lorakit=energy(P1) if spectral else None,
                energy_peft=energy(P2) if spectral else None,
                lorakit_times_ms=ours_times, peft_times_ms=theirs_times,
            )

    rows = []
    for method in METHODS:
        try:
            row = compare(method)
        except RuntimeError as exc:
            failures.append({"shape": shape, "method": method.label, "error": f"{type(exc).__name__}: {exc}"})
            print(f"  {shape} {method.label}: FAILED: {exc}", flush=True)
            continue
        rows.append(row)
        print(f"  {shape} {method.label}: lorakit {row.lorakit_ms:.1f} ms, PEFT {row.peft_ms:.1f} ms", flush=True)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| shape (out×in) | init | lorakit ms | PEFT ms | speed-up | lorakit factors-only ms "
        "| max\\|s·BA\\| | max\\|Δ s·BA\\| | max\\|Δ A,B\\| | max\\|Δ W'\\| | energy lorakit / PEFT |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        factors = "—" if r.max_diff_factors is None else f"{r.max_diff_factors:.1e}"
        energies = "—" if r.energy_lorakit is None else f"{r.energy_lorakit:.4f} / {r.energy_peft:.4f}"
        speedup = f"{r.speedup:.1f}×" if r.speedup >= 10 else f"{r.speedup:.2f}×"
        lines.append(
            f"| {r.shape[0]}×{r.shape[1]} | {r.method} | {r.lorakit_ms:.1f} | {r.peft_ms:.1f} "
            f"| {speedup} | {r.lorakit_factors_ms:.1f} | {r.max_abs_product:.2e} | {r.max_diff_product:.1e} "
            f"| {factors} "
            f"| {r.max_diff_weight:.1e} | {energies} |"
        )
    return "\n".join(lines)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"2048x2048,256x2048"`` → ``[(2048, 2048), (256, 2048)]``."""
    shapes = []
    for item in text.split(","):
        out_features, in_features = item.lower().split("x")
        shapes.append((int(out_features), int(in_features)))
    return shapes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", type=parse_shapes, default=TINYLLAMA_SHAPES,
                        help="comma-separated OUTxIN, default: TinyLlama-1.1B's four shapes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/init_speed.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "rank": args.rank, "alpha": args.alpha,
        "repeats": args.repeats, "warmup": args.warmup, "dtype": "float32",
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": {"lorakit": lorakit.__version__, "peft": peft.__version__, "torch": torch.__version__},
    }
    print(f"device={args.device} ({meta['device']}), threads={meta['torch_threads']}, "
          f"r={args.rank}, α={args.alpha}, repeats={args.repeats}, "
          f"load average {meta['load_average_at_start']}", flush=True)
    failures: list[dict[str, Any]] = []
    rows = [row for shape in args.shapes for row in bench_shape(shape, args, device, failures)]
    print()
    print(markdown(rows))
    for failure in failures:
        print(f"\nFAILED {failure['shape']} {failure['method']}: {failure['error']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "rows": [asdict(r) for r in rows], "failures": failures}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
