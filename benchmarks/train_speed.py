"""End-to-end LoRA training throughput on one device: lorakit's speed options against
PEFT + transformers and against the frozen model's floor (run by hand; ``gpu_check.sh`` on a GPU).

Every variant trains on the same supervised examples (prompt tokens unlabelled), in the same
micro-batches of ``--batch`` examples, with the same LoRA (rank ``--rank``, α = 2r, dropout 0, the
seven projections of every block) and AdamW. A step is what a training loop does per optimizer
step on collated batches already on the device: forward, loss, backward, ``optimizer.step()``,
``zero_grad`` (data loading excluded, the same for all). Variants:

- ``floor``: the frozen model with no adapter, its own loss (transformers' ``labels``) and a
  backward to the input embeddings only: what any adapter's step costs at least;
- ``floor sparse``: the same with lorakit's loss at the loss positions only (the floor of a
  lorakit step, whose vocabulary projection skips the prompt tokens);
- ``peft``: PEFT's LoRA, transformers' loss (``labels``), padded batches: the usual stack (on a
  bf16 base PEFT keeps float32 factors and runs its adapter matmuls in float32; lorakit keeps
  float32 factors and runs them in bf16, as under autocast);
- ``peft bf16 adapter``: the same with ``autocast_adapter_dtype=False`` (factors and matmuls in
  bf16; on the GPU only);
- ``lorakit``: lorakit's defaults on the same padded batches (logits at the loss positions);
- ``lorakit dense``: with ``train.sparse_logits: false`` (every position projected, as PEFT);
- ``lorakit fused``: with ``train.fused_adapters`` (one ``A`` matmul for q/k/v and gate/up);
- ``lorakit packed``: ``data.packing`` rows of ``--seq`` tokens, as many examples per step;
- ``lorakit padding-free``: ``data.padding_free`` (one row per micro-batch; variable-length
  flash attention when ``--attention flash_attention_2``);
- ``lorakit compile``: ``train.compile`` (``torch.compile``; compiled before the first round).

Reported per variant: real tokens/s (the examples' own tokens, padding excluded; the median over
the timed steps of each step's tokens over its time); MFU, model FLOPs per second over the
device's peak (the same median) with the printed formula ``6·N_adapter·t`` (the adapter's forward
and both backward products) ``+ 4·N·t`` (the frozen weights' forward and input-gradient backward,
``N`` the frozen matmul weights with the output layer) ``+ 6·L·d·Σ s²`` (causal attention) — the
same model FLOPs for every variant, so sparse logits count as saved time, not as fewer FLOPs;
peak memory (CUDA: the allocator's peak during the variant's steps, its own weights and optimizer
state included; CPU: not measured, ``saved_mib`` gives the activation bytes autograd keeps
instead); and the ratio to PEFT. Variants run in interleaved rounds (``--repeats``), each round
timing ``--steps`` steps after ``--warmup`` untimed ones (and every variant takes two untimed
steps before the first round, in which torch.compile compiles); medians are over all rounds.

    python benchmarks/train_speed.py                                  # CPU: the embedded SmolLM2-135M
    python benchmarks/train_speed.py --model tinyllama --batch 16 --seq 1024   # GPU, bf16
    python benchmarks/train_speed.py --model llama3-8b --batch 4 --seq 1024 --variants floor,peft,lorakit
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.data import Collator, encode_all, load_records
from lorakit.data.packing import FlatCollator, PackedCollator, pack
from lorakit.data.tokens import IGNORE_INDEX
from lorakit.evaluate.loss import LossLogits, token_loss
from lorakit.models import load_model
from memory import saved_tensor_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {  # random weights in these shapes (no download)
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),  # the test's
    "tinyllama": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
}
# dense bf16 tensor-core peaks (no sparsity), FLOP/s
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
ALPACA = Path(__file__).resolve().parents[1] / "../shared/data/alpaca_en_demo.json"
VARIANTS = ("floor", "floor sparse", "peft", "peft bf16 adapter", "lorakit", "lorakit dense", "lorakit fused",
            "lorakit packed", "lorakit padding-free", "lorakit compile")


@dataclass
class Row:
    library: str
    variant: str
    tokens_per_s: float
    mfu: float
    peak_mib: float | None
    saved_mib: float
    step_ms: float
    tokens_per_step: float
    ratio_to_peft: float | None = None
    step_times_ms: list[float] = field(default_factory=list)


# -- the workload ------------------------------------------------------------------------------
def examples(args: argparse.Namespace, vocab: int) -> list[dict[str, list[int]]]:
    """Encoded supervised examples: Alpaca records with the SmolLM2 tokenizer (ids folded into a
    random model's vocabulary), or with ``--data synthetic`` seeded ones with lengths uniform in
    ``[seq/4, seq]`` and the first 40 % of each a prompt."""
    if args.data != "synthetic":
        if not Path(args.data).exists():
            raise SystemExit(f"no Alpaca file at {args.data}; pass --data PATH or --data synthetic")
        _, tokenizer = load_model("embedded")
        records = load_records(args.data)[: args.examples]
        encoded = encode_all(records, tokenizer, "alpaca", args.seq, "assistant")
        return [{"input_ids": [i % vocab for i in e["input_ids"]], "labels": [t if t == IGNORE_INDEX else t % vocab
                                                                               for t in e["labels"]]}
                for e in encoded]
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.examples):
        size = int(torch.randint(args.seq // 4, args.seq + 1, (), generator=generator))
        ids = torch.randint(0, vocab, (size,), generator=generator).tolist()
        prompt = int(size * 0.4)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def example_lengths(positions: list[int]) -> list[int]:
    """The lengths of the examples in a packed row (each starts at position 0)."""
    starts = [i for i, position in enumerate(positions) if position == 0] + [len(positions)]
    return [b - a for a, b in zip(starts, starts[1:])]


def batches(data: list[dict[str, list[int]]], args: argparse.Namespace, pad_id: int
            ) -> dict[str, list[tuple[dict[str, torch.Tensor], list[int]]]]:
    """Each batching mode's step batches over the same examples in one seeded order, with the
    lengths of the examples in each."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).tolist()
    groups = [[data[i] for i in order[k:k + args.batch]] for k in range(0, len(order) - args.batch + 1, args.batch)]
    collate = Collator(SimpleNamespace(pad_token_id=pad_id, eos_token_id=pad_id))
    sizes = [[len(e["input_ids"]) for e in group] for group in groups]
    # packed rows of --seq tokens, as many rows per step as hold the padded steps' examples on average
    rows = pack([data[i] for i in order[: len(groups) * args.batch]], args.seq)
    row_sizes = [example_lengths(row["position_ids"]) for row in rows]
    per_step = max(1, round(len(rows) / max(len(groups), 1)))
    packed = [(PackedCollator(pad_id)(rows[k:k + per_step]), sum(row_sizes[k:k + per_step], []))
              for k in range(0, len(rows) - per_step + 1, per_step)]
    return {"padded": [(collate(g), n) for g, n in zip(groups, sizes)], "packed": packed,
            "flat": [(FlatCollator()(g), n) for g, n in zip(groups, sizes)]}


# -- model FLOPs -------------------------------------------------------------------------------
def frozen_matmul_params(model: torch.nn.Module) -> int:
    """``N``: the weights of the frozen matmuls (every linear layer, the output layer included;
    the embedding lookup is not a matmul)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def step_flops(config: Any, n_frozen: int, n_adapter: int, lengths: list[int]) -> float:
    """``6·N_adapter·t + 4·N·t + 6·L·d·Σ s²`` (see the module docstring)."""
    t = sum(lengths)
    d = attention_width(config)
    return 6 * n_adapter * t + 4 * n_frozen * t + 6 * config.num_hidden_layers * d * sum(s * s for s in lengths)


def attention_width(config: Any) -> int:
    """``d``: heads × head size of the queries."""
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head


def peak_flops(device: torch.device) -> tuple[float, str]:
    """The device's peak: a GPU's dense bf16 tensor peak from its name, or on the CPU the best
    measured float32 matmul rate (2048², all threads)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAKS.items():
            if key in name:
                return value, f"{name}: dense bf16 peak {value / 1e12:.0f} TFLOP/s"
        raise SystemExit(f"no peak FLOP/s known for {name}; add it to GPU_PEAKS")
    a = torch.randn(2048, 2048)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    rate = 2 * 2048**3 / best
    return rate, f"CPU: measured float32 matmul peak {rate / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)"


# -- the variants ------------------------------------------------------------------------------
Step = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def floor_setup(sparse: bool) -> Callable[[Any], tuple[Any, Step, Any]]:
    """The frozen model: forward, loss, backward to the input embeddings (no weight gradients)."""
    def setup(model):
        embed = model.get_input_embeddings()
        logits = LossLogits(model) if sparse else None

        def step(batch):
            inputs = embed(batch["input_ids"]).detach().requires_grad_()
            if sparse:
                def embedded(**kwargs):  # lorakit's loss, the model fed with the embeddings
                    return model(inputs_embeds=inputs, **{k: v for k, v in kwargs.items() if k != "input_ids"})
                loss = token_loss(embedded, batch, logits) / _units(batch)
            else:
                rest = {k: v for k, v in batch.items() if k != "input_ids"}
                loss = model(inputs_embeds=inputs, **rest, use_cache=False).loss
            loss.backward()
            return loss
        return model, step, None
    return setup


def _units(batch: dict[str, torch.Tensor]) -> int:
    return max(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()), 1)


def training_step(loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor], optimizer: Any) -> Step:
    """One optimizer step on a batch: the mean loss, backward, ``optimizer.step()``, ``zero_grad``."""
    def step(batch):
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def peft_setup(args: argparse.Namespace, autocast_adapter_dtype: bool = True
               ) -> Callable[[Any], tuple[Any, Step, Any]]:
    """PEFT's LoRA; by default (as ``get_peft_model``) its factors are float32 on a bf16 base and
    its adapter matmuls run in float32; ``autocast_adapter_dtype=False`` keeps them in the base's dtype."""
    def setup(model):
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS,
                                                 lora_dropout=0.0), autocast_adapter_dtype=autocast_adapter_dtype)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return model, training_step(lambda batch: model(**batch, use_cache=False).loss, optimizer), optimizer
    return setup


def lorakit_setup(args: argparse.Namespace, sparse: bool = True, fused: bool = False,
                  compile: bool = False) -> Callable[[Any], tuple[Any, Step, Any]]:
    def setup(model):
        adapter = lorakit.attach(model, "lora", rank=args.rank, alpha=2 * args.rank, targets=TARGETS, dropout=0.0)
        if fused:
            adapter.fuse_shared_inputs()
        logits = LossLogits(model) if sparse else None
        optimizer = adapter.optimizer(lr=1e-4)
        forward = torch.compile(model, dynamic=True) if compile else model  # as train.compile
        step = training_step(lambda batch: token_loss(forward, batch, logits) / _units(batch), optimizer)
        return model, step, optimizer
    return setup


def setups(args: argparse.Namespace) -> dict[str, tuple[str, str, Callable]]:
    """variant → (library, batching mode, setup)."""
    return {
        "floor": ("transformers", "padded", floor_setup(sparse=False)),
        "floor sparse": ("lorakit", "padded", floor_setup(sparse=True)),
        "peft": ("peft", "padded", peft_setup(args)),
        "peft bf16 adapter": ("peft", "padded", peft_setup(args, autocast_adapter_dtype=False)),
        "lorakit": ("lorakit", "padded", lorakit_setup(args)),
        "lorakit dense": ("lorakit", "padded", lorakit_setup(args, sparse=False)),
        "lorakit fused": ("lorakit", "padded", lorakit_setup(args, fused=True)),
        "lorakit packed": ("lorakit", "packed", lorakit_setup(args)),
        "lorakit padding-free": ("lorakit", "flat", lorakit_setup(args)),
        "lorakit compile": ("lorakit", "padded", lorakit_setup(args, compile=True)),
    }


# -- measuring ---------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_bytes(model: torch.nn.Module, optimizer: Any) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def time_steps(step: Step, steps: list[dict[str, torch.Tensor]], device: torch.device) -> tuple[list[float], int]:
    """Milliseconds of each step, and the allocator's peak during them (CUDA)."""
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for batch in steps:
        synchronize(device)
        start = time.perf_counter()
        step(batch)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return times, peak


def measure(args: argparse.Namespace, base: torch.nn.Module, data: dict[str, list], device: torch.device
            ) -> dict[str, dict[str, Any]]:
    """Interleaved rounds over the variants, each with its own copy of the model."""
    chosen = args.variants.split(",")
    prepared = {}
    for name in chosen:
        library, mode, setup = setups(args)[name]
        model, step, optimizer = setup(copy.deepcopy(base))
        model.train()
        on_device = [({k: v.to(device) for k, v in b.items()}, n) for b, n in data[mode]]
        step(on_device[0][0])  # a first step (torch.compile compiles here), then one measured for its memory
        _, saved = saved_tensor_bytes(functools.partial(step, on_device[0][0]), [*model.parameters(), *model.buffers()])
        prepared[name] = {"library": library, "model": model, "step": step, "optimizer": optimizer,
                          "batches": on_device, "saved": saved, "times": [], "peak": 0, "lengths": []}
    position = 0
    for round_ in range(args.repeats):
        for name in chosen:
            p = prepared[name]
            picked = [p["batches"][(position + i) % len(p["batches"])] for i in range(args.warmup + args.steps)]
            for batch, _ in picked[: args.warmup]:
                p["step"](batch)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            times, peak = time_steps(p["step"], [b for b, _ in picked[args.warmup:]], device)
            p["times"] += times
            p["lengths"] += [n for _, n in picked[args.warmup:]]
            if device.type == "cuda":  # the steps' peak over what was there before, plus its own state
                p["peak"] = max(p["peak"], peak - before + resident_bytes(p["model"], p["optimizer"]))
            print(f"  round {round_ + 1} {name:22s} median {statistics.median(times):9.1f} ms", flush=True)
        position += args.warmup + args.steps
    return prepared


def rows(prepared: dict[str, dict[str, Any]], args: argparse.Namespace, base: torch.nn.Module, peak: float,
         device: torch.device) -> list[Row]:
    """One row per variant: median step time, mean real tokens and model FLOPs of its steps."""
    n_frozen = frozen_matmul_params(base)
    n_adapter = sum(args.rank * (m.in_features + m.out_features) for n, m in base.named_modules()
                    if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS)
    out = []
    for name, p in prepared.items():
        adapter = 0 if name.startswith("floor") else n_adapter
        seconds = [t / 1e3 for t in p["times"]]
        tokens_per_s = statistics.median(sum(n) / s for n, s in zip(p["lengths"], seconds))
        mfu = statistics.median(step_flops(base.config, n_frozen, adapter, n) / s / peak
                                for n, s in zip(p["lengths"], seconds))
        step_s, tokens = statistics.median(seconds), statistics.mean(sum(n) for n in p["lengths"])
        out.append(Row(p["library"], name, round(tokens_per_s, 1), round(mfu, 4),
                       round(p["peak"] / 2**20, 1) if device.type == "cuda" else None,
                       round(p["saved"] / 2**20, 1), round(step_s * 1e3, 1), round(tokens, 1),
                       step_times_ms=[round(t, 1) for t in p["times"]]))
    reference = next((r for r in out if r.variant == "peft"), None)
    for row in out:
        row.ratio_to_peft = round(row.tokens_per_s / reference.tokens_per_s, 3) if reference else None
    return out


def markdown(table: list[Row]) -> str:
    lines = ["| variant | tokens/s | × PEFT | MFU | step ms | saved MiB | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        ratio = f"{r.ratio_to_peft:.2f}×" if r.ratio_to_peft is not None else "–"
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "–"
        lines.append(f"| {r.variant} | {r.tokens_per_s:.0f} | {ratio} | {100 * r.mfu:.1f} % | {r.step_ms:.0f} | "
                     f"{r.saved_mib:.0f} | {peak} |")
    return "\n".join(lines)


PADDED = ("floor", "floor sparse", "peft", "peft bf16 adapter", "lorakit", "lorakit dense", "lorakit fused",
          "lorakit compile")  # the variants that take the same padded batches


def paired(rows: list[dict[str, Any]]) -> str:
    """Step-time ratios of the padded variants, step by step: the same batch at the same point of
    each round, so noise that slows a round slows both sides. Median (min–max) over the steps."""
    by = {r["variant"]: r["step_times_ms"] for r in rows if r["variant"] in PADDED}
    pairs = [(a, b) for a, b in [("lorakit", "peft"), ("lorakit", "floor"), ("lorakit", "floor sparse"),
                                 ("peft", "floor"), ("lorakit dense", "peft"), ("lorakit fused", "lorakit"),
                                 ("lorakit compile", "lorakit"), ("lorakit compile", "floor sparse"),
                                 ("lorakit", "peft bf16 adapter")] if a in by and b in by]
    lines = ["| step time | median ratio | range |", "|---|---:|---:|"]
    for a, b in pairs:
        ratios = [x / y for x, y in zip(by[a], by[b])]
        lines.append(f"| {a} / {b} | {statistics.median(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} |")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------
def build(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, int]:
    """The base model (frozen) and its pad id: the embedded SmolLM2 on the CPU default, else a
    random-weight Llama of the named shapes."""
    dtype = getattr(torch, args.dtype)
    if args.model == "smollm2":
        model, tokenizer = load_model("embedded", dtype=args.dtype, device=device)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.model], attention_dropout=0.0)).to(device, dtype)
        pad_id = 0
    if args.attention:
        model.set_attn_implementation(args.attention)
    model.requires_grad_(False)
    return model, pad_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", *SHAPES], default="smollm2")
    parser.add_argument("--data", default=str(ALPACA), help="an Alpaca JSON file, or synthetic")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--variants", default=None, help="comma-separated (default: all but padding-free, and on the "
                        "CPU but peft bf16 adapter)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--attention", default=None, help="sdpa, eager, flash_attention_2 (default: the model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="print the tables of a saved result and stop")
    args = parser.parse_args(argv)
    if args.table is not None:
        saved = json.loads(args.table.read_text())
        print(markdown([Row(**r) for r in saved["rows"]]), paired(saved["rows"]), sep="\n\n")
        return
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    skipped = {"lorakit padding-free"} | ({"peft bf16 adapter"} if device.type == "cpu" else set())
    args.variants = args.variants or ",".join(v for v in VARIANTS if v not in skipped)
    args.out = args.out or Path("benchmarks/results") / ("train_speed_cuda.json" if device.type == "cuda"
                                                         else "train_speed.json")
    base, pad_id = build(args, device)
    data = examples(args, base.config.vocab_size)
    lengths = [len(e["input_ids"]) for e in data]
    peak, peak_text = peak_flops(device)
    if device.type == "cuda" and args.dtype != "bfloat16":
        peak_text += f" (this run is {args.dtype}: its MFU is against the bf16 peak)"
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "peak": peak_text, **{k: str(v) for k, v in vars(args).items()},
            "mean_length": statistics.mean(lengths), "load_average_at_start": os.getloadavg()[0],
            "flops": "per step: 6·N_adapter·t + 4·N·t + 6·L·d·Σ s² (t real tokens, s each example's length, "
                     f"N = {frozen_matmul_params(base):,} frozen matmul weights, L = {base.config.num_hidden_layers}, "
                     f"d = {attention_width(base.config)})",
            "versions": {"lorakit": lorakit.__version__, "peft": peft.__version__, "torch": torch.__version__}}
    print(json.dumps(meta, indent=1), flush=True)
    prepared = measure(args, base, batches(data, args, pad_id), device)
    table = rows(prepared, args, base, peak, device)
    print()
    print(markdown(table), paired([asdict(r) for r in table]), sep="\n\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in table]}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
