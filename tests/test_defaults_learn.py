"""The presets' defaults learn: a quality regression test on the embedded models.

At the default ``train.lr`` and each preset's own defaults, a short run must lower the eval loss by
at least ``FRACTION`` of what LoRA's run lowers it, on both kinds of study task: instruction tuning
(SmolLM2 on the built-in chatterbot pairs) and classification (MiniLM on the built-in chatterbot
topics). These stand in for the study's Alpaca and SST-2 files, which are not shipped: the
chatterbot corpus installs anywhere. The runs share one loaded base per task. ``FRACTION`` comes
from the measurements in ``docs/methods/index.md#defaults-that-learn`` (``python
tests/test_defaults_learn.py`` measures again): the healthy presets lowered the instruction loss
by 0.69–3.8 of LoRA's drop, the ones that barely move by 0.00–0.20.

A classifier's head trains in full and lowers the loss with no adapter at all (at VeRA's and
AdaLoRA's ``lr_scale`` of 25 it does nearly all of it), so on that task the head stays as it was
loaded and the drop is the adapter's alone. Marked ``quality`` (about 8 minutes on 2 CPU cores),
which the default test run deselects: ``pytest -m quality tests/test_defaults_learn.py``.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorakit.config import load_config
from lorakit.presets import method_names

FRACTION = 0.5
# defaults that still do not learn instruction tuning in a short run (measured below); the tuned
# instruction study decides their factor. strict: the test fails once they do learn, to update this
NOT_YET = {("instruction", "adalora"): "AdaLoRA at 25× LoRA's rate (its tuned SST-2 factor): Λ starts at zero",
           ("instruction", "simplex_lora"): "SimplexLoRA at 5× LoRA's rate (its tuned SST-2 factor): 1/n gates",
           ("classification", "adalora"): "AdaLoRA's factors barely move in 12 steps (0.04 of LoRA's drop with the "
                                          "head held): Λ starts at zero"}
TASKS = {
    "instruction": ["model.path=embedded", "data.path=chatterbot", "data.train_size=48", "data.eval_size=8",
                    "data.max_length=48", "train.batch_size=4", "train.grad_accum=1", "train.max_steps=12",
                    "eval.metrics=[eval_loss]"],
    "classification": ["task.type=classification", "data.path=chatterbot", "data.train_size=320",
                       "data.eval_size=96", "data.max_length=32", "data.shuffle_seed=0", "train.batch_size=16",
                       "train.grad_accum=1", "train.max_steps=12", "eval.metrics=[eval_loss]"],
}
# the presets' schedules need a few steps of their own in a 16-20-step run
SHORT = {"adalora": ["method.adalora_t_init=2", "method.adalora_t_final=4"],
         "lora_drop": ["method.drop_warmup_steps=4"],
         "weight_lora": ["method.selection_steps=8"], "weight_lora_plus": ["method.selection_steps=8"],
         "simplex_lora": ["method.simplex_every=5"],
         # the inits that read data: the instruction task's 48 records make 12 batches
         "eva": ["method.init_batches=8"], "corda": ["method.init_batches=8"], "lora_ga": ["method.init_batches=8"],
         # LoftQ fits a quantized base: its run loads its own (NF4), and its drop is from its own start
         "loftq": ["model.quantize=nf4"]}


def drop(task: str, method: str, base: tuple | None) -> float:
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


def own_base(task: str, method: str) -> tuple | None:
    """The shared full-precision base, or ``None`` (the run loads its own) for an init that needs a quantized one."""
    from lorakit.presets import parts_of, resolve

    return None if parts_of(resolve(method)).init.quantized_only else base_of(task)


@functools.lru_cache(maxsize=None)
def lora_drop(task: str) -> float:
    with adapters_only(task):
        return drop(task, "lora", base_of(task))


@contextlib.contextmanager
def adapters_only(task: str) -> Iterator[None]:
    """Within it, a classifier's head stays as loaded (on ``task`` classification), so that a run's
    drop is its adapter's; nothing changes on a causal LM."""
    from lorakit.heads import head_modules
    from lorakit.train import loop

    real = loop.attach

    def frozen_head(model, *args, **kwargs):
        adapter = real(model, *args, **kwargs)
        for name in head_modules(model):
            model.get_submodule(name).requires_grad_(False)  # no gradient: AdamW leaves it as loaded
        return adapter
    if task != "classification":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "attach", frozen_head)
        yield


@pytest.mark.quality
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method", [m for m in method_names() if m != "lora"])
def test_every_preset_learns_at_its_defaults(task, method, request):
    if (task, method) in NOT_YET:
        request.applymarker(pytest.mark.xfail(reason=NOT_YET[task, method], strict=True))
    reference = lora_drop(task)
    assert reference > 0, f"LoRA itself did not learn {task}"
    with adapters_only(task):
        found = drop(task, method, own_base(task, method))
    assert found >= FRACTION * reference, (f"{method} lowered the {task} eval loss by {found:.4f}, under "
                                           f"{FRACTION} of LoRA's {reference:.4f}")


if __name__ == "__main__":  # measure every preset's drop against LoRA's, to choose FRACTION
    for task in sys.argv[1:] or TASKS:
        reference = lora_drop(task)
        print(f"{task}: lora {reference:.4f}")
        for method in method_names():
            if method != "lora":
                with adapters_only(task):
                    value = drop(task, method, own_base(task, method))
                print(f"{task}: {method} {value:.4f} ({value / reference:.2f} of LoRA's)", flush=True)
