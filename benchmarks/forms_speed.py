"""Training-step time and memory of DoRA, VeRA and LoRA-FA, lorakit vs PEFT (run by hand).

One process, one randomly initialised Llama built from a config (no download), copied for each
run; every run adapts all seven projections of every block with dropout 0 and takes the same
random token batches. Timed: a full training step (forward, backward, optimizer step,
zero_grad), median over ``--steps`` after ``--warmup`` untimed steps, with CUDA synchronised.
Memory:

- ``saved MiB``: the bytes autograd keeps for backward in one forward pass, parameters and
  frozen weights excluded (the activation memory, measured with ``saved_tensors_hooks``; the
  same on any device);
- ``peak MiB`` (CUDA only): ``torch.cuda.max_memory_allocated`` during the timed steps, model
  and optimizer state included.

Pairs: lorakit ``lora`` / PEFT LoRA (reference), ``dora`` / ``use_dora=True``, ``vera`` /
``VeraConfig``, ``lora_fa`` / LoRA + ``create_lorafa_optimizer`` (PEFT's projected variant; so
lorakit runs ``lora_fa_projected=True`` too). Runs alternate lorakit / PEFT per method.

    python benchmarks/forms_speed.py                       # CPU, SmolLM2-135M's shapes
    python benchmarks/forms_speed.py --model tinyllama --batch 8 --seq 512 --dtype bfloat16  # GPU
"""

from __future__ import annotations

import argparse
import copy
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
from peft import LoraConfig, VeraConfig, get_peft_model
from peft.optimizers import create_lorafa_optimizer
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit
from init_speed import synchronize
from memory import saved_tensor_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODELS = {
    # SmolLM2-135M's shapes, 8 of its 30 blocks (CPU-sized)
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=8,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    # TinyLlama-1.1B's shapes, all 22 blocks (GPU-sized)
    "tinyllama": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4),
}


@dataclass
class Row:
    method: str
    library: str
    step_ms: float
    saved_mib: float
    peak_mib: float | None
    trainable: int
    step_times_ms: list[float]


def build_model(name: str, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**MODELS[name], attention_dropout=0.0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def lorakit_setup(method: str, rank: int, alpha: float) -> Callable[[Any], tuple[Any, torch.optim.Optimizer]]:
    def setup(model):
        options = {"lora_fa_projected": True} if method == "lora_fa" else {}
        if method != "vera":  # VeRA has no α/r scale (its vectors d, b set the size of ΔW)
            options["alpha"] = alpha
        adapter = lorakit.attach(model, method, rank=rank, targets=TARGETS, dropout=0.0, **options)
        return model, adapter.optimizer(lr=1e-4)
    return setup


def peft_setup(method: str, rank: int, alpha: float) -> Callable[[Any], tuple[Any, torch.optim.Optimizer]]:
    def setup(model):
        if method == "vera":
            model = get_peft_model(model, VeraConfig(r=rank, target_modules=TARGETS, vera_dropout=0.0))
        else:
            model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS,
                                                     lora_dropout=0.0, use_dora=method == "dora"))
        if method == "lora_fa":
            return model, create_lorafa_optimizer(model, r=rank, lora_alpha=alpha, lr=1e-4)
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return setup


def saved_bytes(model, batch: torch.Tensor) -> int:
    """Activation bytes kept for backward by one forward pass (parameters and buffers excluded)."""
    exclude = [*model.parameters(), *model.buffers()]
    loss, total = saved_tensor_bytes(lambda: model(input_ids=batch, labels=batch).loss, exclude)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def run(label: str, library: str, setup, base, batches: list[torch.Tensor], args, device) -> Row:
    model, optimizer = setup(copy.deepcopy(base))
    model.train()
    saved = saved_bytes(model, batches[0])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        synchronize(device)
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row = Row(label, library, statistics.median(times), saved / 2**20, peak, trainable, times)
    print(f"  {label:8s} {library:8s} step {row.step_ms:8.1f} ms  saved {row.saved_mib:8.1f} MiB"
          + (f"  peak {peak:8.0f} MiB" if peak is not None else "") + f"  trainable {trainable:,}", flush=True)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def prepare(args: argparse.Namespace) -> tuple[torch.device, LlamaForCausalLM, list[torch.Tensor], dict[str, Any]]:
    """The device, the base model, three random token batches and the run's metadata (printed)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    base = build_model(args.model, dtype, device)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, base.config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
               for _ in range(3)]
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), **{k: str(v) for k, v in vars(args).items()},
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "versions": {"lorakit": lorakit.__version__, "peft": peft.__version__, "torch": torch.__version__}}
    print(json.dumps(meta), flush=True)
    return device, base, batches, meta


def markdown(rows: list[Row]) -> str:
    by = {(r.method, r.library): r for r in rows}
    cuda = any(r.peak_mib is not None for r in rows)
    head = "| method | lorakit ms | PEFT ms | lorakit / PEFT | saved MiB lorakit / PEFT |"
    head += " peak MiB lorakit / PEFT |" if cuda else ""
    lines = [head, "|---|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for method in dict.fromkeys(r.method for r in rows):
        ours, theirs = by.get((method, "lorakit")), by.get((method, "peft"))
        if ours is None or theirs is None:
            continue
        line = (f"| {method} | {ours.step_ms:.1f} | {theirs.step_ms:.1f} | {ours.step_ms / theirs.step_ms:.2f}× "
                f"| {ours.saved_mib:.0f} / {theirs.saved_mib:.0f} |")
        if cuda:
            line += f" {ours.peak_mib:.0f} / {theirs.peak_mib:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--methods", default="lora,dora,vera,lora_fa")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--vera-rank", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/forms_speed.json"))
    args = parser.parse_args(argv)
    device, base, batches, meta = prepare(args)
    rows = []
    for method in args.methods.split(","):
        rank = args.vera_rank if method == "vera" else args.rank
        rows.append(run(method, "lorakit", lorakit_setup(method, rank, args.alpha), base, batches, args, device))
        rows.append(run(method, "peft", peft_setup(method, rank, args.alpha), base, batches, args, device))
    print()
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
