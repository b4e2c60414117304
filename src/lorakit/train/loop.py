"""The training loop, on accelerate so that multi-GPU launchers work unchanged.

One optimizer step = ``grad_accum`` micro-batches; the loss of the step is the sum of response
token cross-entropies divided by the number of response tokens in the whole step, so gradient
accumulation gives the same gradient as one large batch. Metrics go to ``metrics.jsonl`` and
TensorBoard event files (``run_log``; training every ``log_every`` steps, eval every
``eval_every`` steps and at the end);
checkpoints every ``save_every`` steps; the final adapter to ``<output_dir>/adapter``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_scheduler, set_seed

from ..adapter import Adapter, attach, final_ranks, load
from ..config import RunConfig, dump_config
from ..errors import LorakitError
from ..evaluate.loss import evaluate_loss, label_tokens, token_loss
from ..evaluate.suite import evaluate_run
from ..io.atomic import write_text_atomic
from ..io.lock import folder_lock
from ..methods import validate
from ..schedules import SCHEDULES
from .checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint, set_rng_state
from .data_order import step_batches, steps_per_epoch
from .run_log import RunLog
from .setup import load_split, prepare_data, prepare_model

CONFIG_KEYS_FREE_ON_RESUME = ("log_every", "eval_every", "save_every", "keep_checkpoints", "output_dir",
                              "tensorboard")
# sections that do not change what is trained, so a resumed run may differ in them
SECTIONS_FREE_ON_RESUME = ("eval",)


@dataclass
class StepInfo:
    """What callbacks see after every optimizer step."""

    step: int
    total_steps: int
    loss: float
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _accelerator(mixed_precision: str) -> Accelerator:
    """An ``Accelerator`` for this run; a process that runs several (``compare``, tests) may change
    the precision between runs, which accelerate's process-wide state otherwise refuses."""
    AcceleratorState._reset_state(reset_partial_state=False)  # keeps the distributed set-up
    return Accelerator(mixed_precision=_mixed_precision(mixed_precision))


def global_sum(accelerator: Accelerator, value: float | torch.Tensor) -> float:
    """``value`` (a number or a 0-d tensor on the device) summed over all processes."""
    if accelerator.num_processes > 1:
        value = accelerator.reduce(torch.as_tensor(value, dtype=torch.float64, device=accelerator.device), "sum")
    return float(value)


def _check_distributed(accelerator: Accelerator, spec: Any) -> None:
    if accelerator.num_processes > 1 and SCHEDULES.get(spec.schedule).resizes:
        raise LorakitError(f"schedule '{spec.schedule}' replaces adapter parameters during training, which "
                           "DistributedDataParallel cannot follow; train it in a single process")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # as the checkpoint stores it (tuples become lists)
    train = {k: v for k, v in config["train"].items() if k not in CONFIG_KEYS_FREE_ON_RESUME}
    rest = {k: v for k, v in config.items() if k not in SECTIONS_FREE_ON_RESUME}
    return {**rest, "train": train}


def _make_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission: said before the model loads
        raise LorakitError(f"cannot use train.output_dir {output_dir}: {exc.strerror or exc}; "
                           "choose a writable folder") from None


def _check_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from; ``None`` starts a fresh run (with ``resume``, only where no
    run has been saved yet: a finished run without checkpoints is never overwritten)."""
    if not resume:
        if (output_dir / "checkpoints").exists() or (output_dir / "adapter").exists():
            raise LorakitError(f"{output_dir} already holds a run; pass --resume to continue it "
                               "or choose another train.output_dir")
        return None
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is None:
        if (output_dir / "adapter").exists():
            raise LorakitError(f"{output_dir} holds a finished run without checkpoints, so there is nothing "
                               "to resume; choose another train.output_dir")
        print(f"lorakit: no checkpoint in {output_dir}; starting a fresh run", file=sys.stderr)
    return checkpoint


def train(config: RunConfig, resume: bool = False,
          callbacks: Sequence[Callable[[StepInfo], None]] = (), progress: bool = True,
          base: tuple[nn.Module, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``config.model`` with ``config.method`` on ``config.data``; return the summary.

    ``base``: an already loaded ``(model, tokenizer)`` for ``config.model`` (a sweep loads it
    once); the run trains a deep copy and leaves it untouched. A second process training into
    the same ``output_dir`` at the same time is refused (``lorakit.io.lock``).
    """
    output_dir = Path(config.train.output_dir)
    _make_output_dir(output_dir)
    first_process = int(os.environ.get("RANK", "0")) == 0  # the other data-parallel processes share the run
    with folder_lock(output_dir) if first_process else contextlib.nullcontext():
        return _train(config, resume, callbacks, progress, base, output_dir)


def _train(config: RunConfig, resume: bool, callbacks: Sequence[Callable[[StepInfo], None]], progress: bool,
           base: tuple[nn.Module, Any] | None, output_dir: Path) -> dict[str, Any]:
    tc = config.train
    checkpoint = _check_output_dir(output_dir, resume)
    split = load_split(config)
    accelerator = _accelerator(tc.mixed_precision)
    # every record becomes one example, so the step count (and what depends on it) is known
    # before the model is loaded, and a config error costs no loading time
    per_epoch = steps_per_epoch(len(split[0]), tc.batch_size, tc.grad_accum, accelerator.num_processes)
    total_steps = tc.max_steps or per_epoch * tc.epochs
    spec = config.method_spec()
    _check_distributed(accelerator, spec)
    spec = SCHEDULES.get(spec.schedule).complete(spec, total_steps)
    validate(spec)
    set_seed(tc.seed)
    if base is not None:
        model, tokenizer = copy.deepcopy(base[0]).to(accelerator.device), base[1]
    else:
        model, tokenizer = prepare_model(config, accelerator.device)
    train_examples, eval_examples, collate = prepare_data(config, tokenizer, split)

    state: dict[str, Any] = {"config": config.to_dict()}
    if checkpoint is not None:
        saved_state, tensors = read_checkpoint(checkpoint)
        if _comparable(saved_state["config"]) != _comparable(state["config"]):
            raise LorakitError(f"{checkpoint} was made with a different config; resume with the same config")
        adapter: Adapter = load(model, checkpoint)
    else:
        adapter = attach(model, spec)
    if tc.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    optimizer = adapter.optimizer(lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = get_scheduler(tc.scheduler, optimizer, num_warmup_steps=tc.warmup_steps,
                              num_training_steps=total_steps)
    start_step = 0
    if checkpoint is not None:
        optimizer.load_state_dict(tensors["optimizer"])
        adapter.load_training_state(tensors.get("training_state", {}))  # exact W (Delta-LoRA), EMAs
        scheduler.load_state_dict(tensors["scheduler"])
        set_rng_state(tensors["rng"])
        start_step = saved_state["step"]
    model, prepared_optimizer = accelerator.prepare(model, optimizer)

    main = accelerator.is_main_process
    if main:
        write_text_atomic(output_dir / "config.yaml", dump_config(config))
    log = RunLog(output_dir, main, [g["name"] for g in optimizer.param_groups], tc.tensorboard,
                 resume_step=start_step if checkpoint is not None else None)
    device = accelerator.device

    def run_eval(step: int) -> dict[str, float]:
        if not eval_examples:
            return {}
        metrics = evaluate_loss(model, eval_examples, collate, tc.eval_batch_size, device)
        log.write({"step": step, **metrics})
        return metrics

    if start_step == 0:
        run_eval(0)
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, desc=f"train {config.method_spec().name}",
               disable=not (progress and main), dynamic_ncols=True)
    # the loss window of the next log record; a checkpoint keeps it, so a resumed run logs the same
    window_loss, window_tokens = saved_state.get("log_window", (0.0, 0)) if checkpoint else (0.0, 0)
    started = time.time()
    last_loss = float("nan")  # the training loss of the last log window (token-weighted)
    for step in range(start_step, total_steps):
        batches = [collate([train_examples[i] for i in idx]) for idx in step_batches(
            step, len(train_examples), tc.batch_size, tc.grad_accum, tc.seed,
            accelerator.process_index, accelerator.num_processes)]
        n_tokens = max(int(global_sum(accelerator, sum(label_tokens(b["labels"]) for b in batches))), 1)
        step_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            # gradients are all-reduced only on the step's last micro-batch
            with accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext():
                with accelerator.autocast():
                    loss_sum = token_loss(model, batch)
                # DDP averages over processes; × world size makes that the sum over all tokens / n_tokens
                accelerator.backward(loss_sum / n_tokens * accelerator.num_processes)
            step_loss += loss_sum.detach().double()
        step_loss = global_sum(accelerator, step_loss)  # the step's one host sync for the loss
        if not math.isfinite(step_loss):  # refuse to apply (and later checkpoint) a diverged step
            raise LorakitError(f"the training loss is {step_loss} at step {step + 1}: training diverged (learning "
                               "rate too high, or a float16 overflow); this step was not applied and the last "
                               "checkpoint is intact; lower train.lr and resume, or start over")
        grad_norm = None
        if tc.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(adapter.parameters(), tc.max_grad_norm))
        prepared_optimizer.step()
        scheduler.step()
        prepared_optimizer.zero_grad(set_to_none=True)
        window_loss, window_tokens = window_loss + step_loss, window_tokens + n_tokens
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss / n_tokens:.4f}")
        metrics: dict[str, float] = {}
        if done % tc.log_every == 0 or done == total_steps:
            record = {"step": done, "epoch": done / per_epoch, "loss": window_loss / window_tokens,
                      "lr": [g["lr"] for g in optimizer.param_groups], "grad_norm": grad_norm,
                      "elapsed_s": round(time.time() - started, 3)}
            log.write(record)
            window_loss, window_tokens = 0.0, 0
            last_loss = record["loss"]
        if tc.eval_every and done % tc.eval_every == 0 and done != total_steps:
            metrics = run_eval(done)
        if main and tc.save_every and done % tc.save_every == 0 and done != total_steps:
            save_checkpoint(output_dir, done, adapter, optimizer, scheduler,
                            {**state, "log_window": [window_loss, window_tokens]}, tc.keep_checkpoints)
        for callback in callbacks:
            callback(StepInfo(done, total_steps, step_loss / n_tokens, output_dir, metrics))
    bar.close()

    final = evaluate_run(accelerator.unwrap_model(model), tokenizer, config, split[1], eval_examples, collate,
                         output_dir if main else None) if eval_examples else {}
    log.write({"step": total_steps, **final})
    log.close()
    summary = {"method": config.method_spec().name, "components": config.method_spec().components(),
               "steps": total_steps, "train_loss": last_loss, **final,
               "trainable_parameters": adapter.num_parameters(),
               "seconds": round(time.time() - started, 2), "adapter": str(output_dir / "adapter")}
    if adapter.spec.schedule != "fixed":  # where the rank budget went
        summary["final_ranks"] = final_ranks(adapter.config())
    if main:
        adapter.save(output_dir / "adapter")
        save_checkpoint(output_dir, total_steps, adapter, optimizer, scheduler, state, tc.keep_checkpoints)
        write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return summary
