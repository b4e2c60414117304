"""What a classifier's head learns alone: a compare config's recipe trained with the adapter's
factors held where they start (``ΔW = 0`` throughout), so only the head trains, at the given
learning rates and seeds; the test scores as JSON.

A sequence classifier's head trains in full next to every adapter, at the method's rate
(``lr_scale × train.lr``). A method tuned to a high rate therefore also trains its head faster, and
this measures how much of its score the head alone reaches at that rate.

    python scripts/head_only.py configs/study/sst2_tuned.yaml --lr 2.9e-2 1.2e-3 --seeds 0 1 2 \\
        --out docs/results/study_sst2_tuned/head_only.json

It holds the factors by wrapping the training loop's ``attach`` (an experiment, not an option).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lorakit.config import build_config
from lorakit.io.atomic import write_text_atomic
from lorakit.io.json_text import json_text
from lorakit.train import loop, train


def held_factors(attach: Any) -> Any:
    """``attach`` whose adapter's factors take no gradient (AdamW leaves them where they start)."""
    def attach_held(*args: Any, **kwargs: Any) -> Any:
        adapter = attach(*args, **kwargs)
        for layer in adapter.layers.values():
            layer.form.requires_grad_(False)
        return adapter
    return attach_held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a compare (or train) config of a classification task")
    parser.add_argument("--lr", type=float, nargs="+", required=True, help="learning rates (the head's own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True, help="JSON file for the scores")
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.config).read_text())
    raw.pop("compare", None)
    raw["method"] = {**raw.get("method", {}), "name": "lora"}
    loop.attach = held_factors(loop.attach)
    rows = []
    for lr in args.lr:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as folder:
                raw["train"].update(lr=lr, seed=seed, output_dir=folder, save_every=None)
                summary = train(build_config(json.loads(json.dumps(raw))), progress=False)
            metrics = {k: summary[k] for k in raw.get("eval", {}).get("metrics", ["eval_loss"]) if k in summary}
            rows.append({"lr": lr, "seed": seed, **metrics})
            print(json_text(rows[-1]), flush=True)
    write_text_atomic(Path(args.out), json_text({"config": args.config, "head_only": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
