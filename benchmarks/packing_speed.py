"""Training throughput with padded, length-grouped and packed batches (run by hand).

Real training tokens per second — tokens of the examples themselves, padding excluded — over one
pass through the same examples, in each batching mode, on a randomly initialised model with
SmolLM2-135M's shapes (``forms_speed.MODELS``, no download) and the embedded SmolLM2 tokenizer:

- ``padded``: batches of ``--batch`` examples in random order, right-padded to the longest;
- ``grouped``: the same batches of ``data.group_by_length`` (similar lengths together);
- ``packed``: ``data.packing`` rows of ``--max-length`` tokens, ``--rows`` per batch;
- ``peft packed``: PEFT's LoRA on the same packed rows built by transformers'
  ``DataCollatorWithFlattening`` (its padding-free collator; one flattened row per batch).

A step is forward, backward, optimizer step, zero_grad (lorakit LoRA, rank 16, q/k/v/o). The modes
run in interleaved rounds (``--repeats``); the median tokens/s of each mode and its ratio to
``padded`` in the same round are reported.

    python benchmarks/packing_speed.py --data ../shared/data/alpaca_en_demo.json --max-length 512
    python benchmarks/packing_speed.py --data chatterbot --format messages --max-length 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, DataCollatorWithFlattening

import lorakit
from forms_speed import build_model
from lorakit.data import Collator, encode_all, load_records
from lorakit.data.packing import PackedCollator, pack
from lorakit.evaluate.loss import token_loss
from lorakit.models import embedded_gguf_path
from lorakit.train.data_order import GROUP_STEPS, grouped_by_length

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def batches(examples, mode: str, batch: int, rows: int, max_length: int, pad_id: int, seed: int):
    """The mode's batches over one pass through ``examples``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=generator).tolist()
    if mode == "packed":
        packed = pack([examples[i] for i in order], max_length)
        return [PackedCollator(pad_id)(packed[i:i + rows]) for i in range(0, len(packed), rows)]
    if mode == "peft packed":
        packed = pack([examples[i] for i in order], max_length)
        flatten = DataCollatorWithFlattening(return_position_ids=True)
        groups = [[examples[i] for i in order][j:j + n] for j, n in _row_spans(packed)]
        merged = [sum(groups[k:k + rows], []) for k in range(0, len(groups), rows)]
        return [{k: v for k, v in flatten([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in g]).items()
                 if k in ("input_ids", "labels", "position_ids")} for g in merged]
    if mode == "grouped":
        lengths = [len(e["input_ids"]) for e in examples]
        order = grouped_by_length(order, lengths, batch, batch * GROUP_STEPS, generator)
    collate = Collator(type("Pad", (), {"pad_token_id": pad_id, "eos_token_id": pad_id})())
    return [collate([examples[i] for i in order[j:j + batch]]) for j in range(0, len(order), batch)]


def _row_spans(rows):
    """``(start, count)`` of the examples each packed row holds, in order."""
    start = 0
    for row in rows:
        count = sum(1 for p in row["position_ids"] if p == 0)
        yield start, count
        start += count


def train_pass(model, optimizer, batches) -> float:
    model.train()
    started = time.perf_counter()
    for batch in batches:
        token_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def setup(mode: str, rank: int):
    model = build_model("smollm2", torch.float32, torch.device("cpu"))
    if mode == "peft packed":
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    adapter = lorakit.attach(model, "lora", rank=rank, targets=TARGETS)
    return model, adapter.optimizer(lr=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/alpaca_en_demo.json")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="examples per padded/grouped batch")
    parser.add_argument("--rows", type=int, default=1, help="packed rows per batch")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/packing_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    path = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    records = load_records(args.data, args.format)[: args.examples]
    examples = encode_all(records, tokenizer, "chat", args.max_length)
    real = sum(len(e["input_ids"]) for e in examples)
    modes = ["padded", "grouped", "packed", "peft packed"]
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_index in range(args.repeats):
        rotated = modes[round_index % len(modes):] + modes[:round_index % len(modes)]
        seconds = {}
        for mode in rotated:
            model, optimizer = setup(mode, args.rank)
            work = batches(examples, mode, args.batch, args.rows, args.max_length, tokenizer.pad_token_id or 0, 0)
            train_pass(model, optimizer, work[:1])  # warm-up step
            seconds[mode] = train_pass(model, optimizer, work)
            rates[mode].append(real / seconds[mode])
            print(f"round {round_index + 1} {mode:12s} {len(work):4d} batches {seconds[mode]:7.2f} s "
                  f"{real / seconds[mode]:8.1f} tokens/s", flush=True)
        for mode in modes:
            ratios[mode].append(seconds["padded"] / seconds[mode])
    rows = [{"mode": m, "tokens_per_s": statistics.median(rates[m]), "vs_padded": statistics.median(ratios[m]),
             "vs_padded_range": [min(ratios[m]), max(ratios[m])]} for m in modes]
    print(f"\n{len(examples)} examples, {real} real tokens, max_length {args.max_length}, data {args.data}")
    print("| mode | tokens/s | × padded |\n|---|---:|---:|")
    for row in rows:
        low, high = row["vs_padded_range"]
        print(f"| {row['mode']} | {row['tokens_per_s']:.0f} | {row['vs_padded']:.2f} [{low:.2f}, {high:.2f}] |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": {k: str(v) for k, v in vars(args).items()}, "real_tokens": real,
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
