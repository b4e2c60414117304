"""Two adapters trained on different tasks, and their combinations, scored on both tasks.

On the embedded SmolLM2: a LoRA trained on Alpaca demo records and one trained on the built-in
chatterbot conversations (same rank, steps and rate), then ``lorakit.combine`` of the two with
``cat`` (the exact sum, and the average), ``svd`` at the adapters' rank and ``ties``; each
adapter, each combination and the base model are scored by eval loss on each task's held-back
records.

    python scripts/combine_two_tasks.py ../shared/data/alpaca_en_demo.json docs/results/combine_two_tasks
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import lorakit
from lorakit.combine import combine
from lorakit.config import load_config
from lorakit.loading import evaluate, load_base, load_split
from lorakit.train import train

COMMON = ["model.path=embedded", "method.name=lora", "method.rank=16", "method.alpha=32",
          "method.targets=all-linear", "data.train_size=320", "data.eval_size=100", "data.max_length=128",
          "data.shuffle_seed=0", "train.epochs=1", "train.batch_size=4", "train.grad_accum=1", "train.lr=1e-3",
          "train.report_to=none", "train.save_every=null", "eval.metrics=[eval_loss]", "train.seed=0"]
COMBINATIONS = {"cat 1 + 1": ([1.0, 1.0], "cat", {}), "cat ½ + ½": ([0.5, 0.5], "cat", {}),
                "svd ½ + ½ (rank 16)": ([0.5, 0.5], "svd", {"rank": 16}),
                "ties ½ + ½ (density 0.5)": ([0.5, 0.5], "ties", {"density": 0.5})}


def main(alpaca: str, out: Path) -> None:
    started = time.time()
    tasks = {"alpaca": load_config(None, [*COMMON, f"data.path={alpaca}", "data.template=alpaca"]),
             "chatterbot": load_config(None, [*COMMON, "data.path=chatterbot"])}
    base = load_base(tasks["alpaca"], labels=None)
    rows = {"base model": scores(tasks, base[0], base[1])}
    with tempfile.TemporaryDirectory() as folder:
        adapters = []
        for name, config in tasks.items():
            print(f"training the {name} adapter", file=sys.stderr)
            run = load_config(None, [*COMMON, *_data(config), f"train.output_dir={folder}/{name}"])
            train(run, progress=False, base=base)
            adapters.append(Path(folder) / name / "adapter")
            model = copy.deepcopy(base[0])
            lorakit.load(model, adapters[-1])
            rows[f"{name} adapter"] = scores(tasks, model, base[1])
        for label, (weights, how, options) in COMBINATIONS.items():
            model = copy.deepcopy(base[0])
            combine(model, adapters, weights, how, **options)
            rows[label] = scores(tasks, model, base[1])
    out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "seconds": round(time.time() - started), "settings": COMMON}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def scores(tasks: dict, model, tokenizer) -> dict[str, float]:
    """The eval loss of ``model`` on each task's eval records."""
    return {name: round(evaluate(config, model, tokenizer, ([], load_split(config)[1]))["eval_loss"], 4)
            for name, config in tasks.items()}


def _data(config) -> list[str]:
    return [f"data.path={config.data.path}", f"data.template={config.data.template}"]


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "docs/results/combine_two_tasks"))
