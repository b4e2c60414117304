"""Where a spectral init starts on a quantized base: the eval loss at attach (before any step) of
OLoRA and PiSSA on the embedded SmolLM2, every one of the seven projections adapted, for an NF4 and
an int8 base, each way of handling the residual ``W − s·B₀A₀`` (``spectral_residual``):

- ``requantize``: the dequantized ``W − s·B₀A₀`` is quantized again (PEFT on a quantized layer);
- ``correction``: the quantized ``W`` stays and a frozen ``−s·B₀A₀`` path cancels the adapter, so
  the model at attach is the quantized base exactly;
- ``loftq``: the init decomposes the checkpoint's full-precision ``W`` and its residual is quantized
  once (LoftQ's quantization step with the init's pair);

and of the ``loftq`` init itself (``--loftq-iters``, each a row), against the full-precision model
and the quantized base alone (run by hand). The loss is the
response-token loss on the first ``--records`` Alpaca demo records
(``../shared/data/alpaca_en_demo.json``, in file order, 128 tokens at most). Writes
``benchmarks/results/quantized_start.json`` (after every row, so a stopped run keeps what it measured).

    python benchmarks/quantized_start.py --ranks 8 16 32 64 --records 32 --loftq-iters 1 5 --kinds nf4
    python benchmarks/quantized_start.py --ranks 16 64 --kinds int8 --out benchmarks/results/quantized_start_int8.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import lorakit
from lorakit.data import encode, load_records
from lorakit.io.json_text import json_text
from lorakit.models import load_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list, batch_size: int = 8) -> float:
    """The mean loss over every response token of ``examples``, in right-padded batches (a quantized
    layer dequantizes its weight once per forward, so batching is what keeps this fast)."""
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in chunk])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in chunk])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in chunk])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:]
        kept = targets != -100
        total += torch.nn.functional.cross_entropy(logits[kept], targets[kept], reduction="sum").item()
        tokens += int(kept.sum())
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--loftq-iters", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--kinds", nargs="+", default=["nf4", "int8"], choices=["nf4", "int8"])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "quantized_start.json"))
    args = parser.parse_args()
    model, tokenizer = load_model("embedded")
    examples = [encode(r, tokenizer, "alpaca", 128) for r in load_records(args.data)[:args.records]]
    rows = [{"base": "float32", "init": "none", "rank": None, "residual": None,
             "eval_loss": eval_loss(model, examples)}]
    print(rows[-1], flush=True)
    out = Path(args.out)
    about = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
             "records": args.records}
    for quantize in args.kinds:
        base, _ = load_model("embedded", quantize=quantize)
        rows.append({"base": quantize, "init": "none", "rank": None, "residual": None,
                     "eval_loss": eval_loss(base, examples)})
        print(rows[-1], flush=True)
        cases = [(init, rank, {"spectral_residual": residual}) for init in ("olora", "pissa") for rank in args.ranks
                 for residual in ("requantize", "correction", "loftq")]
        cases += [("loftq", rank, {"loftq_iter": t}) for rank in args.ranks for t in args.loftq_iters]
        for init, rank, options in cases:
            model, _ = load_model("embedded", quantize=quantize)
            began = time.perf_counter()
            lorakit.attach(model, "lora", init=init, rank=rank, alpha=2 * rank, targets=PROJECTIONS, **options)
            rows.append({"base": quantize, "init": init, "rank": rank,
                         "residual": options.get("spectral_residual", f"T={options.get('loftq_iter')}"),
                         "attach_s": round(time.perf_counter() - began, 1), "eval_loss": eval_loss(model, examples)})
            print(rows[-1], flush=True)
            out.write_text(json_text({**about, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
