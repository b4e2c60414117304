"""The presets' defaults learn: a quality regression test on the embedded models.

At the default ``train.lr`` and each preset's own defaults, a short run must lower the eval loss by
at least ``FRACTION`` of what LoRA's run lowers it, on both kinds of study task: instruction tuning
(SmolLM2 on the built-in chatterbot pairs) and classification (MiniLM on the built-in chatterbot
topics). The runs share one loaded base per task. ``FRACTION`` comes from the measurements in
``docs/methods/index.md#defaults-that-learn`` (run ``python tests/test_defaults_learn.py`` to
measure again); it catches a preset that barely moves the model, as VeRA, AdaLoRA, SimplexLoRA and
the λ = 16 OLoRA+ did at the shared rate before their defaults changed.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import pytest

from lorakit.config import load_config
from lorakit.presets import method_names

FRACTION = 0.3
TASKS = {
    "instruction": ["model.path=embedded", "data.path=chatterbot", "data.train_size=96", "data.eval_size=24",
                    "data.max_length=64", "train.batch_size=4", "train.grad_accum=1", "train.max_steps=16",
                    "eval.metrics=[eval_loss]"],
    "classification": ["task.type=classification", "data.path=chatterbot", "data.train_size=320",
                       "data.eval_size=96", "data.max_length=32", "data.shuffle_seed=0", "train.batch_size=16",
                       "train.grad_accum=1", "train.max_steps=20", "eval.metrics=[eval_loss]"],
}
# the presets' schedules need a few steps of their own in a 16-20-step run
SHORT = {"adalora": ["method.adalora_t_init=2", "method.adalora_t_final=4"],
         "lora_drop": ["method.drop_warmup_steps=4"],
         "weight_lora": ["method.selection_steps=8"], "weight_lora_plus": ["method.selection_steps=8"],
         "simplex_lora": ["method.simplex_every=5"]}


def drop(task: str, method: str, base: tuple) -> float:
    """The eval-loss drop of a short run of ``method`` on ``task`` at its defaults."""
    from lorakit.train import train

    with tempfile.TemporaryDirectory() as folder:
        config = load_config(None, [*TASKS[task], f"method.name={method}", *SHORT.get(method, []),
                                    "train.report_to=none", "train.save_every=null", f"train.output_dir={folder}"])
        summary = train(config, progress=False, base=base)
        first = next(r for r in map(eval_record, (Path(folder) / "metrics.jsonl").read_text().splitlines()) if r)
    return first["eval_loss"] - summary["eval_loss"]


def eval_record(line: str) -> dict | None:
    import json

    record = json.loads(line)
    return record if "eval_loss" in record and record.get("step") == 0 else None


@functools.lru_cache(maxsize=None)
def base_of(task: str) -> tuple:
    from lorakit.loading import labels_of, load_base, load_split

    config = load_config(None, TASKS[task])
    return load_base(config, labels=labels_of(config, load_split(config)))


@functools.lru_cache(maxsize=None)
def lora_drop(task: str) -> float:
    return drop(task, "lora", base_of(task))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method", [m for m in method_names() if m != "lora"])
def test_every_preset_learns_at_its_defaults(task, method):
    reference = lora_drop(task)
    assert reference > 0, f"LoRA itself did not learn {task}"
    found = drop(task, method, base_of(task))
    assert found >= FRACTION * reference, (f"{method} lowered the {task} eval loss by {found:.4f}, under "
                                           f"{FRACTION} of LoRA's {reference:.4f}")


if __name__ == "__main__":  # measure every preset's drop against LoRA's, to choose FRACTION
    for task in sys.argv[1:] or TASKS:
        reference = lora_drop(task)
        print(f"{task}: lora {reference:.4f}")
        for method in method_names():
            if method != "lora":
                value = drop(task, method, base_of(task))
                print(f"{task}: {method} {value:.4f} ({value / reference:.2f} of LoRA's)", flush=True)
