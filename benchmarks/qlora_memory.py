"""Base-model bytes, a training step's peak memory and step time for float32, bfloat16, int8 and NF4
bases of the embedded SmolLM2-135M-Instruct, with the same LoRA adapter (rank 16 on q/k/v/o).

Each (base, repeat) runs in a fresh process, the variants interleaved, so that one process's
allocator state does not leak into another's numbers:

- ``base_mib``: the bytes of the loaded model's parameters and buffers (a 4-bit layer: its packed
  codes plus the absmax statistics), before the adapter is attached;
- ``step_peak_mib``: the peak resident memory of the process during the timed training steps
  minus its resident memory just before them (CPU: Linux's ``VmHWM``, reset through
  ``/proc/self/clear_refs`` right before the steps; CUDA: ``max_memory_allocated`` over them);
- ``step_ms``: the median time of a training step (forward, backward, optimizer step) after two
  warm-up steps; ``time_ratio`` is that over float32's.

    python benchmarks/qlora_memory.py [--repeats 2] [--steps 5] [--out benchmarks/results/qlora_memory.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "int8": ("float32", "int8"),
            "nf4": ("float32", "nf4")}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _reset_peak() -> None:
    """Reset the process's peak resident size (``VmHWM``) to its current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def measure(variant: str, steps: int) -> dict:
    """One variant in this process: load, attach, train ``steps`` + 2 steps on a fixed batch."""
    import torch

    import lorakit
    from lorakit.models import load_model

    dtype, quantize = VARIANTS[variant]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model("embedded", dtype=dtype, quantize=quantize, device=device)
    base_bytes = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])
    base_bytes += sum(t.nbytes for m in model.modules() for t in _quant_state_tensors(m))
    adapter = lorakit.attach(model, "lora", rank=16, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    optimizer = adapter.optimizer(lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(10, len(tokenizer), (4, 96), generator=generator).to(device)
    model.train()

    def step() -> None:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
        _reset_peak()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_mib()
    return {"variant": variant, "device": device, "base_mib": base_bytes / 2**20,
            "step_peak_mib": max(peak - before, 0.0), "step_ms": 1000 * statistics.median(times)}


def _quant_state_tensors(module) -> list:
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return [t for t in (getattr(state, "absmax", None), getattr(state, "code", None)) if t is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/qlora_memory.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in VARIANTS:  # interleaved
            done = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat}: {runs[name][-1]}", file=sys.stderr)
    rows = []
    for name, results in runs.items():
        rows.append({"variant": name, "device": results[0]["device"],
                     "base_mib": round(results[0]["base_mib"], 1),
                     "step_peak_mib": round(statistics.median(r["step_peak_mib"] for r in results), 1),
                     "step_ms": round(statistics.median(r["step_ms"] for r in results), 1)})
    reference = rows[0]["step_ms"]
    for row in rows:
        row["time_ratio"] = round(row["step_ms"] / reference, 3)
    result = {"command": " ".join(["python", *sys.argv]), "model": "embedded SmolLM2-135M-Instruct",
              "adapter": "lora r=16 on q/k/v/o", "batch": "4 x 96 tokens", "repeats": args.repeats, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
