"""The training loop, on accelerate so that multi-GPU launchers work unchanged.

``train`` runs a ``Run`` through its phases: **prepare** (data, model, adapter or checkpoint,
optimizer), **resume** (optimizer, scheduler, RNG and training state from the checkpoint), then for
every optimizer step **step** (forward/backward over ``grad_accum`` micro-batches, clip, update),
**log**, **evaluate** and **checkpoint** when due, and **finish** (final evaluation and summary,
sealed into the final checkpoint, then **publish**: the final log record, the adapter and
``summary.json``, written from that checkpoint). The loss of a step is the objective's sum over
the step's units — response tokens' cross-entropies, or DPO's pair losses (``objectives``) —
divided by the number of units in the whole step (over all processes), so gradient accumulation
and data parallelism give the same gradient as one large batch. Metrics go to ``metrics.jsonl`` and
TensorBoard event files (``run_log``); checkpoints every ``save_every`` steps; the final
adapter to ``<output_dir>/adapter``.

Resuming (``--resume``) verifies the checkpoint's checksums first (``checkpoint``). Every kill
point resumes to the uninterrupted run's outputs: a kill before the final checkpoint resumes from
the checkpoint before it and trains the same steps again; a kill after it is completed from what
it recorded (``complete_finished_run``: the same record, adapter bytes and summary, timings
included, that the uninterrupted run wrote). A finished run, resumed, is left as it is: one line
on stderr says so, and its summary is returned.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn
from transformers import get_scheduler, set_seed

from ..adapter import Adapter
from ..api import attach, load
from ..config import RunConfig, dump_config
from ..core.distributed import full
from ..core.spec import MethodSpec
from ..data.labelled import check_labels
from ..errors import LorakitError
from ..heads import reseed_new_modules
from ..integrations.liger import apply_liger
from ..io.adapter_files import CONFIG_FILE, WEIGHTS_FILE, final_ranks
from ..io.atomic import write_text_atomic
from ..io.json_text import finite, json_text
from ..io.lock import folder_lock
from ..loading import Split, encode, final_evaluation, labels_of, load_base, load_held_out, load_split, model_labels
from ..presets import complete_for_run, parts_of, refuse_if_bypassed
from ..rewards import load_rewards
from ..status import Timer, bar, phase, quiet
from .checkpoint import copy_adapter, has_checksums, read_checkpoint, read_trainer_state, save_checkpoint, set_rng_state
from .data_order import step_batches, steps_per_epoch
from .grpo import Grpo
from .objectives import Objective, objective_for
from .output_dir import check_output_dir, comparable, make_output_dir
from .run_log import JSONL_FILE, RunLog, log_ends_with
from .sharding import load_optimizer_state, optimizer_state, shard

ADAPTER_DIR, SUMMARY_FILE = "adapter", "summary.json"
FINAL_RECORD = f"final {JSONL_FILE} record"  # how complete_finished_run names a missing final log record


@dataclass
class StepInfo:
    """What callbacks see after every optimizer step."""

    step: int
    total_steps: int
    loss: float
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)


def train(config: RunConfig, resume: bool = False,
          callbacks: Sequence[Callable[[StepInfo], None]] = (), progress: bool = True,
          base: tuple[nn.Module, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``config.model`` with ``config.method`` on ``config.data``; return the summary.

    ``base``: an already loaded ``(model, tokenizer)`` for ``config.model`` (a sweep loads it
    once); the run trains a deep copy and leaves it untouched. A second process training into
    the same ``output_dir`` at the same time is refused (``lorakit.io.lock``). ``resume`` where
    the run has finished loads no model: see ``complete_finished_run``. ``progress``: status lines
    and bars (``lorakit.status``).
    """
    with quiet(not progress), Timer() as timer:
        return _train(config, resume, callbacks, base, timer)


def _train(config: RunConfig, resume: bool, callbacks: Sequence[Callable[[StepInfo], None]],
           base: tuple[nn.Module, Any] | None, timer: Timer) -> dict[str, Any]:
    output_dir = Path(config.train.output_dir)
    make_output_dir(output_dir, config)
    first_process = int(os.environ.get("RANK", "0")) == 0  # the other data-parallel processes share the run
    with folder_lock(output_dir) if first_process else contextlib.nullcontext():
        checkpoint = check_output_dir(output_dir, resume)  # verified against its checksums
        final = finished_run(config, output_dir, checkpoint) if checkpoint is not None else None
        if final is not None:
            return complete_finished_run(config, output_dir, checkpoint, final, first_process)
        run = Run.prepare(config, output_dir, checkpoint, base, timer)
        run.resume()
        run.start()
        try:
            with phase("train"):
                for step in range(run.start_step, run.total_steps):
                    loss, tokens, grad_norm = run.step(step)
                    run.log(step + 1, loss, tokens, grad_norm)
                    metrics = run.evaluate(step + 1)
                    run.checkpoint(step + 1)
                    for callback in callbacks:
                        callback(StepInfo(step + 1, run.total_steps, loss / tokens, output_dir, metrics))
            return run.finish()
        finally:
            run.close()


class Run:
    """One training run: its config, model, adapter, optimizer and position, phase by phase."""

    def __init__(self, config: RunConfig, output_dir: Path, accelerator: Accelerator, spec: MethodSpec,
                 split: Split, total_steps: int, per_epoch: int, checkpoint: Path | None, timer: Timer) -> None:
        self.config, self.output_dir, self.accelerator, self.timer = config, output_dir, accelerator, timer
        self.spec, self.split, self.total_steps, self.per_epoch = spec, split, total_steps, per_epoch
        self.checkpoint_folder = checkpoint
        # (name, intact) of the checkpoint that holds the run so far: one resumed from is intact when
        # its checksums verified (check_output_dir), one this run wrote always is
        self.last_checkpoint = (checkpoint.name, has_checksums(checkpoint)) if checkpoint else (None, True)
        self.main = accelerator.is_main_process
        self.state: dict[str, Any] = {"config": config.to_dict()}  # what every checkpoint records
        self.start_step = 0
        self.sharded = False  # train.fsdp in several processes (set by prepare)
        self.held_out: list[dict[str, Any]] | None = None  # data.held_out_path's records (set by prepare)
        self.window_loss, self.window_tokens = 0.0, 0  # the loss window of the next log record
        self.window_extra: dict[str, list[float]] = {}  # the objective's own step metrics in that window (GRPO)
        self.last_loss = float("nan")  # the training loss of the last log window (token-weighted)
        self.step_seconds, self.steps_timed = 0.0, 0  # the optimizer steps alone (no evaluation, no saving)

    # -- prepare ---------------------------------------------------------------------------
    @classmethod
    def prepare(cls, config: RunConfig, output_dir: Path, checkpoint: Path | None,
                base: tuple[nn.Module, Any] | None, timer: Timer) -> Run:
        """Check everything that needs no model, then load the model, data and adapter (from
        ``checkpoint``, a verified one, when resuming)."""
        tc = config.train
        with phase("data"):
            split = load_split(config)
        accelerator = _accelerator(tc.mixed_precision)
        run = cls(config, output_dir, accelerator, config.method_spec(), split, 0, 0, checkpoint, timer)
        # every record becomes one example, so the step count (and what depends on it) is known
        # before the model is loaded, and a config error costs no loading time
        run._count_steps(len(split[0]))
        spec = run.spec
        _check_calibration(spec, tc.objective)
        labels = labels_of(config, split)  # a classifier's classes (None: a causal LM)
        run.held_out = load_held_out(config)
        if labels is not None and run.held_out is not None:
            check_labels(labels, ([], run.held_out))
        if base is not None:
            if model_labels(base[0]) != labels:
                raise LorakitError("the base given to train() has another head than the config's task and data "
                                   "need; load it with lorakit.loading.load_base(config, labels=labels_of(...))")
            with phase("load"):
                run.model, run.tokenizer = copy.deepcopy(base[0]).to(accelerator.device), base[1]
        else:
            run.model, run.tokenizer = load_base(config, accelerator.device, labels)
        reseed_new_modules(run.model, tc.seed)  # a new head is the run's own, shared base or not
        set_seed(tc.seed)  # dropout draws the same with a shared base as after a load (which drew a head)
        with phase("data", f"tokenizing {len(split[0]) + len(split[1])} records"):
            run.examples = encode(config, run.tokenizer, split, labels)
        if len(run.examples.train) != len(split[0]):  # skipped or packed: the steps follow the examples
            run._count_steps(len(run.examples.train))
        run.adapter = run._adapter()
        run.objective = run._objective(accelerator.process_index)
        _check_deepspeed(accelerator, spec, tc.fused_adapters)
        run.sharded = tc.fsdp and accelerator.num_processes > 1
        if run.sharded:  # before the optimizer is built: sharding replaces the parameters
            run._shard()
        run._speed_up()
        run._build_optimizer()
        return run

    def _objective(self, process: int) -> Objective:
        """The run's training objective over its adapter (GRPO samples with this process's seeds)."""
        tc = self.config.train
        if tc.objective == "grpo":
            return Grpo(self.adapter, self.tokenizer, load_rewards(tc.rewards), tc, process)
        sparse = tc.sparse_logits and self.config.task.type == "causal_lm"
        return objective_for(tc.objective, self.adapter, tc.dpo_beta, self.config.task.type,
                             self.model if sparse else None)

    def _shard(self) -> None:
        """Shard the model's parameters (FSDP), refusing the parts that need whole factors."""
        parts = parts_of(self.spec)
        if self.config.train.objective == "dpo" and parts.optimizer.changes_base:
            raise LorakitError(f"DPO's reference undoes {self.spec.optimizer}'s moves of W with the whole factors, "
                               "which sharded parameters do not hold; train it without train.fsdp")
        if not parts.schedule.shardable:
            raise LorakitError(f"schedule {self.spec.schedule!r} does not run on sharded parameters (it replaces "
                               "them or computes on whole factors); train it without train.fsdp (DDP works)")
        shard(self.model)

    def _count_steps(self, examples: int) -> None:
        """Steps per epoch and in all for ``examples`` training examples, and what derives from them."""
        tc = self.config.train
        self.per_epoch = steps_per_epoch(examples, tc.batch_size, tc.grad_accum, self.accelerator.num_processes)
        self.total_steps = tc.max_steps or self.per_epoch * tc.epochs
        self.spec = complete_for_run(self.spec, self.total_steps)

    def _adapter(self) -> Adapter:
        """The checkpoint's adapter (its config must match), or a fresh one."""
        if self.checkpoint_folder is None:
            with phase("attach", f"attaching {self.spec.name} adapters"):
                return attach(self.model, self.spec, init_data=self._calibration_batches()
                              if parts_of(self.spec).init.reads_batches(self.spec.options()) else None)
        self.saved_state, self.tensors = read_checkpoint(self.checkpoint_folder)
        check_same_config(self.checkpoint_folder, self.saved_state["config"], self.config)
        if self.main and not has_checksums(self.checkpoint_folder):
            print(f"lorakit: note: {self.checkpoint_folder} has no checksums (an older lorakit wrote it); resuming it "
                  "unverified", file=sys.stderr)
        return load(self.model, self.checkpoint_folder)

    def _calibration_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """What a data-aware init reads: the run's training micro-batches in the run's own seeded
        order, within the first epoch; every process reads the same ones (process 0's, as if it were
        alone), so every process draws the same factors."""
        tc = self.config.train
        n = len(self.examples.train)
        for step in range(steps_per_epoch(n, tc.batch_size, tc.grad_accum, 1)):
            for idx in step_batches(step, n, tc.batch_size, tc.grad_accum, tc.seed, 0, 1, self.examples.lengths):
                yield self.examples.train_collate([self.examples.train[i] for i in idx])

    def _speed_up(self) -> None:
        """The speed options, each exact: liger's kernels, fused adapter inputs and gradient
        checkpointing (torch.compile comes once the model is wrapped, ``_wrapped``)."""
        tc = self.config.train
        if tc.kernels == "liger":
            apply_liger(self.model)
        if tc.fused_adapters and not self.adapter.fuse_shared_inputs():
            warnings.warn("train.fused_adapters found no adapted layers that read one input (q/k/v, gate/up with "
                          "method.dropout 0); it changes nothing here", stacklevel=2)
        if tc.gradient_checkpointing:
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False

    def _build_optimizer(self) -> None:
        tc = self.config.train
        self.optimizer = self.adapter.optimizer(lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = get_scheduler(tc.scheduler, self.optimizer, num_warmup_steps=tc.warmup_steps,
                                       num_training_steps=self.total_steps)

    # -- resume ----------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore the optimizer, the adapter's training state, the scheduler, the RNG and the
        position from the checkpoint (nothing for a fresh run)."""
        if self.checkpoint_folder is not None:
            load_optimizer_state(self.adapter, self.optimizer, self.tensors["optimizer"], self.config.train.fsdp)
            self.adapter.load_training_state(self.tensors.get("training_state", {}))  # exact W (Delta-LoRA), EMAs
            self.scheduler.load_state_dict(self.tensors["scheduler"])
            set_rng_state(self.tensors["rng"])
            self.start_step = self.saved_state["step"]
            # a checkpoint keeps the open loss window, so a resumed run logs what the uninterrupted one did
            window = self.saved_state.get("log_window", (0.0, 0))
            self.window_loss, self.window_tokens = window[0], window[1]
            self.window_extra = dict(window[2]) if len(window) > 2 else {}
        if self.sharded:  # already sharded (prepare); DDP must not wrap it
            self.prepared_optimizer = self.optimizer
        else:
            self.model, self.prepared_optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self._wrapped()

    def _wrapped(self) -> None:
        """The model as the training steps call it: compiled with ``train.compile`` (evaluation and
        generation call the plain model, whose shapes vary more)."""
        self.step_model = torch.compile(self.model, dynamic=True) if self.config.train.compile else self.model
        self.wrapped_version = self.adapter.structure_version

    def _rewrap(self) -> None:
        """After a schedule replaced adapter parameters (in ``optimizer.step()``): a fresh
        data-parallel wrapper over the model's current parameters (the optimizer already points at
        them, ``Adapter.refresh_optimizer``). Every process made the same change — the decisions
        read all-reduced gradients and statistics, the new factors come from seeded generators — so
        the processes stay identical; DDP checks the shapes agree when it wraps."""
        if self.accelerator.num_processes > 1:
            self.model = _ddp(self.accelerator, self.accelerator.unwrap_model(self.model))
        self._wrapped()

    def start(self) -> None:
        """Open the log, evaluate the starting point of a fresh run, and start the clock."""
        if self.main:
            write_text_atomic(self.output_dir / "config.yaml", dump_config(self.config))
        resumed = self.checkpoint_folder is not None
        self.run_log = RunLog(self.output_dir, self.main, [g["name"] for g in self.optimizer.param_groups],
                              trackers_of(self.config), resume_step=self.start_step if resumed else None,
                              config=self.state["config"])
        if self.start_step == 0:
            if self.examples.skipped:
                self.run_log.write({"step": 0, "skipped_samples": self.examples.skipped})
            if self.config.train.eval_at_start and self.examples.eval:
                with phase("evaluate", f"evaluating the starting point on {len(self.examples.eval)} records"):
                    self._eval_loss(0)
        self.model.train()
        self.bar = bar(total=self.total_steps, initial=self.start_step, desc=f"train {self.spec.name}")
        self.started = time.time()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    # -- step ------------------------------------------------------------------------------
    def step(self, step: int) -> tuple[float, int, float | None]:
        """One optimizer step (0-based ``step``): ``(summed loss, units, grad norm)``; the units are
        what the loss is averaged over (response tokens, or preference pairs)."""
        tc, accelerator, device = self.config.train, self.accelerator, self.accelerator.device
        began = time.perf_counter()
        self.objective.begin_step(step)
        batches = [self.examples.train_collate([self.examples.train[i] for i in idx]) for idx in step_batches(
            step, len(self.examples.train), tc.batch_size, tc.grad_accum, tc.seed,
            accelerator.process_index, accelerator.num_processes, self.examples.lengths)]
        n_tokens = max(int(global_sum(accelerator, sum(self.objective.units(b) for b in batches))), 1)
        step_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            # gradients are all-reduced only on the step's last micro-batch
            with accelerator.no_sync(self.model) if i < len(batches) - 1 else contextlib.nullcontext():
                with accelerator.autocast():
                    loss_sum = self.objective.loss_sum(self.step_model, batch)
                # DDP averages over processes; × world size makes that the sum over all tokens / n_tokens
                accelerator.backward(loss_sum / n_tokens * accelerator.num_processes)
            step_loss += loss_sum.detach().double()
        loss = global_sum(accelerator, step_loss)  # the step's one host sync for the loss
        if not math.isfinite(loss):  # refuse to apply (and later checkpoint) a diverged step
            raise self._diverged(loss, step + 1)
        grad_norm = None
        if tc.max_grad_norm is not None:
            grad_norm = float(full(accelerator.clip_grad_norm_(self.adapter.parameters(), tc.max_grad_norm)))
        self.prepared_optimizer.step()
        self.scheduler.step()
        self.prepared_optimizer.zero_grad(set_to_none=True)
        if self.adapter.structure_version != self.wrapped_version:
            self._rewrap()
        self.step_seconds += time.perf_counter() - began  # (the loss above synchronised the device)
        self.steps_timed += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss / n_tokens:.4f}")
        return loss, n_tokens, grad_norm

    def _diverged(self, loss: float, step: int) -> LorakitError:
        """The error of a non-finite loss at ``step``; it calls the last checkpoint intact only
        where that is known (written by this run, or verified when the run resumed from it)."""
        name, intact = self.last_checkpoint
        if name is None:
            held = "no checkpoint was written yet"
        elif intact:
            held = f"the last checkpoint, {name}, is intact"
        else:
            held = (f"{name}, the checkpoint this run resumed from, has no checksums to verify it, and a damaged "
                    "file there would also do this")
        return LorakitError(f"the training loss is {loss} at step {step}: training diverged (learning rate too high, "
                            f"or a float16 overflow); this step was not applied and {held}; lower train.lr and "
                            "start over in a new train.output_dir (a resumed run keeps the config, so it would "
                            "diverge here again)")

    # -- log, evaluate, checkpoint ---------------------------------------------------------
    def log(self, done: int, loss: float, tokens: int, grad_norm: float | None) -> None:
        """Add the step to the loss window; write a record every ``log_every`` steps and at the end."""
        self.window_loss, self.window_tokens = self.window_loss + loss, self.window_tokens + tokens
        for name, value in self.objective.step_metrics().items():
            self.window_extra.setdefault(name, []).append(value)
        if done % self.config.train.log_every == 0 or done == self.total_steps:
            record = {"step": done, "epoch": done / self.per_epoch, "loss": self.window_loss / self.window_tokens,
                      "lr": [g["lr"] for g in self.optimizer.param_groups], "grad_norm": grad_norm,
                      **{name: sum(values) / len(values) for name, values in self.window_extra.items()},
                      "elapsed_s": round(time.time() - self.started, 3)}
            self.run_log.write(record)
            self.window_loss, self.window_tokens, self.window_extra = 0.0, 0, {}
            self.last_loss = record["loss"]

    def evaluate(self, done: int) -> dict[str, float]:
        """The eval loss every ``eval_every`` steps (the end has its own, fuller evaluation)."""
        every = self.config.train.eval_every
        if not (every and done % every == 0 and done != self.total_steps):
            return {}
        with phase("evaluate"):
            return self._eval_loss(done)

    def _eval_loss(self, step: int) -> dict[str, float]:
        if not self.examples.eval:
            return {}
        metrics = self.objective.evaluate(self.model, self.examples.eval, self.examples.collate,
                                          self.config.train.eval_batch_size, self.accelerator.device)
        self.run_log.write({"step": step, **metrics})
        return metrics

    def checkpoint(self, done: int) -> None:
        """A checkpoint every ``save_every`` steps (the end has its own)."""
        every = self.config.train.save_every
        if every and done % every == 0 and done != self.total_steps:
            with phase("save"):
                self._save_checkpoint(done, {**self.state, "log_window": [self.window_loss, self.window_tokens,
                                                                          self.window_extra]})

    def _save_checkpoint(self, done: int, state: dict[str, Any]) -> Path | None:
        """Written by the first process, which gets its folder (None elsewhere); when sharded,
        every process first gathers the shards."""
        if not (self.main or self.sharded):
            return None
        snapshot = None
        if self.config.train.fsdp:
            snapshot = {"adapter": self.adapter.state_dict(), "training_state": self.adapter.training_state(),
                        "optimizer": optimizer_state(self.model, self.optimizer, named=True)}
        if not self.main:
            return None
        folder = save_checkpoint(self.output_dir, done, self.adapter, self.optimizer, self.scheduler, state,
                                 self.config.train.keep_checkpoints, snapshot)
        self.last_checkpoint = (folder.name, True)
        return folder

    def close(self) -> None:
        """Close the progress bar and the trackers (also when the run stops with an error)."""
        self.bar.close()
        self.run_log.close()

    # -- finish ----------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """The final evaluation and the summary, sealed into the final checkpoint before any
        output is written, then the outputs written from that checkpoint (``publish``): a kill
        before the checkpoint resumes from the one before it, a kill after it is completed from it
        (``complete_finished_run``). Returns the summary (non-finite values as None)."""
        self.bar.close()
        metrics = self._final_metrics()
        final = {"record": {"step": self.total_steps, **metrics}, "summary": finite(self._summary(metrics))}
        with phase("save", f"saving the adapter and the run's outputs into {self.output_dir}"):
            folder = self._save_checkpoint(self.total_steps, {**self.state, "final": final})
            if self.main:
                publish(self.output_dir, folder, final, self.run_log)
        self.accelerator.wait_for_everyone()
        return final["summary"]

    def _final_metrics(self) -> dict[str, float]:
        """``eval``'s metrics of the trained model, and the objective's own next to them."""
        if not self.examples.eval:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        final = final_evaluation(self.config, model, self.tokenizer, self.split, self.held_out,
                                 self.output_dir if self.main else None, self.examples)
        if self.objective.final_metrics:  # the objective's own metrics next to those of the answers
            with phase("evaluate", f"{self.config.train.objective}'s own metrics on the eval split"):
                final.update(self.objective.evaluate(model, self.examples.eval, self.examples.collate,
                                                     self.config.train.eval_batch_size, self.accelerator.device))
        return final

    def _summary(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What ``summary.json`` holds: the method (and every option it ran with), the final metrics,
        the adapter's size and where the run's time and memory went."""
        summary = {"method": self.spec.name, "components": self.spec.components(), "steps": self.total_steps,
                   "train_loss": self.last_loss, **metrics, "trainable_parameters": self.adapter.num_parameters(),
                   **self.timer.record(), **self._resources(),
                   "adapter": str(self.output_dir / ADAPTER_DIR),
                   "method_options": self.spec.to_dict()}  # as resolved: a preset's defaults may change later
        if self.examples.skipped:
            summary["skipped_samples"] = self.examples.skipped
        if self.adapter.spec.schedule != "fixed":  # where the rank budget went
            summary["final_ranks"] = final_ranks(self.adapter.config())
        return summary

    def _resources(self) -> dict[str, float]:
        """What the run's steps cost: ``seconds_per_step`` (optimizer steps of this invocation,
        without evaluations and checkpoints), ``state_mib`` (the bytes of the trained parameters,
        their gradients and the optimizer state: what a method adds to the frozen model, activations
        aside) and, on CUDA, ``peak_memory_mib`` (the allocator's peak during the run)."""
        state = 2 * sum(p.numel() * p.element_size() for p in self.adapter.parameters())  # and a gradient each
        state += sum(v.numel() * v.element_size() for s in self.optimizer.state.values() for v in s.values()
                     if torch.is_tensor(v))
        out = {"seconds_per_step": round(self.step_seconds / max(self.steps_timed, 1), 4),
               "state_mib": round(state / 2**20, 3)}
        if torch.cuda.is_available():
            out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out


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


def trackers_of(config: RunConfig) -> tuple[str, ...]:
    return tuple(name for name in config.train.report_to if name != "none")


def check_same_config(checkpoint: Path, saved: dict[str, Any], config: RunConfig) -> None:
    """Refuse to resume ``checkpoint`` (whose config is ``saved``) with another config (the keys
    a resume may change aside, ``output_dir.comparable``); compared as the checkpoint wrote it."""
    if comparable(saved) != comparable(finite(config.to_dict())):
        raise LorakitError(f"{checkpoint} was made with a different config; resume with the same config")


# -- a finished run ---------------------------------------------------------------------------
def publish(output_dir: Path, checkpoint: Path, final: dict[str, Any], run_log: RunLog) -> None:
    """A finished run's outputs, from its final ``checkpoint``: the final log record (once),
    ``adapter/`` (the checkpoint's adapter files) and ``summary.json``, in this order. Each write
    is atomic and may be done again, so a kill anywhere in here is completed by a resume."""
    run_log.write_final(final["record"])
    copy_adapter(checkpoint, output_dir / ADAPTER_DIR)
    write_text_atomic(output_dir / SUMMARY_FILE, json_text(final["summary"], indent=2, ensure_ascii=False) + "\n")


def finished_run(config: RunConfig, output_dir: Path, checkpoint: Path) -> dict[str, Any] | None:
    """``{"record", "summary"}`` that ``checkpoint`` recorded when it is a finished run's final
    one, else None. A final checkpoint from before lorakit recorded them counts as finished where
    ``summary.json`` reports its step (``record`` None: there is nothing to rewrite from)."""
    state = read_trainer_state(checkpoint)
    check_same_config(checkpoint, state["config"], config)
    if "final" in state:
        return state["final"]
    with contextlib.suppress(OSError, ValueError):  # absent or unreadable: not known to be finished
        summary = json.loads((output_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        if isinstance(summary, dict) and summary.get("steps") == state["step"]:
            return {"record": None, "summary": summary}
    return None


def unwritten(output_dir: Path, record: dict[str, Any] | None) -> list[str]:
    """The outputs of a finished run that are not (all) there: what a kill after the final
    checkpoint left unwritten, or a user removed."""
    if record is None:  # a finished run from before final checkpoints recorded its outputs
        return []
    missing = [] if log_ends_with(output_dir / JSONL_FILE, record) else [FINAL_RECORD]
    if not all((output_dir / ADAPTER_DIR / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE)):
        missing.append(f"{ADAPTER_DIR}/")
    return missing + ([] if (output_dir / SUMMARY_FILE).is_file() else [SUMMARY_FILE])


def complete_finished_run(config: RunConfig, output_dir: Path, checkpoint: Path, final: dict[str, Any],
                          main: bool) -> dict[str, Any]:
    """A finished run, resumed: its summary. Where all its outputs are there, nothing is written;
    else (a kill after the final checkpoint) the missing ones are written from what that
    checkpoint recorded, the bytes the uninterrupted run wrote. One line on stderr says which."""
    steps, missing = final["summary"].get("steps"), unwritten(output_dir, final["record"])
    if not main:
        return final["summary"]
    said = f"lorakit: {output_dir} holds a finished run (step {steps} of {steps})"
    print(f"{said}; writing its {', '.join(missing)} from the final checkpoint" if missing
          else f"{said}; nothing to resume", file=sys.stderr)
    if missing:  # the trackers open only where the final record is still to be logged
        run_log = RunLog(output_dir, FINAL_RECORD in missing, [], trackers_of(config), resume_step=steps)
        try:
            publish(output_dir, checkpoint, final, run_log)
        finally:
            run_log.close()
    return final["summary"]


def _ddp(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """A DistributedDataParallel wrapper as accelerate builds it, without preparing the model again."""
    kwargs = accelerator.ddp_handler.to_kwargs() if accelerator.ddp_handler is not None else {}
    device_ids = [accelerator.local_process_index] if accelerator.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def _check_calibration(spec: MethodSpec, objective: str) -> None:
    """A data-aware init reads supervised training batches before step 0, which only ``sft`` has."""
    if objective != "sft" and parts_of(spec).init.reads_batches(spec.options()):
        what = {"dpo": "preference pairs", "grpo": "prompts whose answers it samples"}.get(objective, "no such batches")
        raise LorakitError(f"init {spec.init!r} reads supervised training batches before step 0, and train.objective "
                           f"{objective} has {what}; use an init that reads no data (e.g. olora, pissa)")


def _check_deepspeed(accelerator: Accelerator, spec: MethodSpec, fused: bool) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        refuse_if_bypassed(spec, "DeepSpeed's ZeRO optimizer")
        if fused:
            raise LorakitError("train.fused_adapters reads sibling layers' factors, which DeepSpeed ZeRO-3 "
                               "partitions; train without train.fused_adapters under DeepSpeed")
