"""lorakit adapters inside transformers' ``Trainer`` and its subclasses (TRL's ``SFTTrainer``,
``DPOTrainer``).

``with_lorakit(TrainerClass)`` returns a subclass that takes ``adapter=`` next to ``model=`` and

- builds its optimizer with ``adapter.optimizer`` — the recipe's parameter groups (LoRA+'s ratio,
  the gate group, weight decay as configured) and the hooks that run recipes and schedules inside
  ``optimizer.step()`` — so LoRA-FA, Delta-LoRA, AdaLoRA, WeightLoRA, SimplexLoRA and LoRA-drop
  behave as in ``lorakit train``, also when accelerate wraps the model and the optimizer; the
  learning-rate scheduler is bound to that optimizer; AdaLoRA's ``T`` is the Trainer's ``max_steps``;
- saves checkpoints and ``save_model`` as the lorakit adapter (``lorakit_adapter.*``) plus its
  training state (Delta-LoRA's exact ``W``, AdaLoRA's importance EMAs), not the full model;
- resumes (``trainer.train(resume_from_checkpoint=...)``) by restoring that adapter — ranks,
  removed and shared layers included — into the adapter it was given, then the Trainer's own
  optimizer, scheduler, RNG and data position;
- for a ``DPOTrainer`` without ``ref_model``: the reference is ``OriginalModel(adapter)``, the same
  model inside ``adapter.original()`` (the exact original base for every preset; no second copy);
- for TRL's online trainers (``GRPOTrainer``, ``RLOOTrainer``) with a KL term (``beta > 0``): the
  same ``OriginalModel(adapter)`` is their ``ref_model``. They would otherwise load a second copy
  of the model from its hub id (their path for a model without a PEFT adapter); lorakit builds
  the trainer with ``beta = 0`` (no reference loaded) and then sets the reference and ``beta``;
- or takes ``method=`` (and ``method_options=``) instead of an adapter and attaches one once the
  Trainer is built: an init that reads data calibrates on the first ``init_batches`` batches of the
  Trainer's own training dataloader (not for a ``DPOTrainer``, whose reference needs the adapter first).

``LorakitTrainer = with_lorakit(transformers.Trainer)``.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..adapter import Adapter
from ..api import attach, restore
from ..core.distributed import is_dtensor
from ..core.spec import MethodSpec
from ..errors import LorakitError
from ..io.adapter_files import read_adapter
from ..presets import from_saved, parts_of, refuse_if_bypassed, resolve

TRAINING_STATE_FILE = "lorakit_training_state.pt"


class OriginalModel(nn.Module):
    """The adapted model seen through ``adapter.original()``: a reference model holding no weights.

    Calls run the adapter's model with every adapted layer computing the original base layer;
    attributes it does not have (``config``, ``generation_config``, ``base_model``, ...) are the model's.
    """

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        object.__setattr__(self, "_adapter", adapter)  # not a submodule: its weights stay the policy's

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._adapter.original():
            return super().__call__(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._adapter.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The original model's generations."""
        with self._adapter.original():
            return self._adapter.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            adapter = self.__dict__.get("_adapter")
            if adapter is None:  # half-built (no __init__): nothing to delegate to
                raise
            return getattr(adapter.model, name)


class LorakitTrainerMixin:
    """What ``with_lorakit`` adds to a Trainer class (see the module docstring)."""

    adapter: Adapter

    def __init__(self, *args: Any, adapter: Adapter | None = None, method: str | MethodSpec | None = None,
                 method_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        if method is not None:
            self._attach_after_init(args, kwargs, model, adapter, method, method_options or {})
            return
        if not isinstance(adapter, Adapter):
            raise LorakitError(f"{type(self).__name__} needs adapter=<the lorakit Adapter of the model>, got "
                               f"{type(adapter).__name__}; attach one with lorakit.attach(model, ...), or pass "
                               "method= to attach it from the training data")
        if model is not adapter.model:
            raise LorakitError("model= must be the model the adapter is attached to (adapter.model)")
        self._init_trainer(args, kwargs, model, adapter)

    def _attach_after_init(self, args: tuple, kwargs: dict[str, Any], model: nn.Module, adapter: Adapter | None,
                           method: str | MethodSpec, options: dict[str, Any]) -> None:
        """``method=``: the Trainer is built first, then the adapter attached; an init that reads data
        calibrates on the first ``init_batches`` batches of the Trainer's own training dataloader."""
        if adapter is not None:
            raise LorakitError("pass adapter= (attached already) or method= (attached by the Trainer), not both")
        if _is_dpo_trainer(type(self)):
            raise LorakitError("a DPOTrainer's reference is the adapter's original model, so the adapter must exist "
                               "first: attach it with lorakit.attach(model, ..., init_data=...) and pass adapter=")
        self._init_trainer(args, kwargs, model, None)
        spec = resolve(method, **options)
        reads = parts_of(spec).init.reads_batches(spec.options())
        self.adapter = attach(model, spec, init_data=self.get_train_dataloader() if reads else None)
        if _is_online_rl_trainer(type(self)) and self.beta != 0.0:
            self.ref_model = OriginalModel(self.adapter)

    def _init_trainer(self, args: tuple, kwargs: dict[str, Any], model: nn.Module, adapter: Adapter | None) -> None:
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers[0] is not None:
            raise LorakitError("the optimizer is built from the adapter (its recipe's groups and step hooks); leave "
                               "optimizers= unset and set learning_rate and weight_decay in the TrainingArguments")
        self.adapter = adapter  # with method=: attached after the Trainer is built
        self._lorakit_steps: int | None = None
        if adapter is not None and _is_dpo_trainer(type(self)) and kwargs.get("ref_model") is None:
            kwargs["ref_model"] = OriginalModel(adapter)
        # transformers refuses a quantized model without a PEFT adapter as "purely quantized"; this one
        # has a lorakit adapter, which its check cannot see
        vouched = getattr(model, "is_quantized", False) and not getattr(model, "_hf_peft_config_loaded", False)
        if vouched:
            model._hf_peft_config_loaded = True
        online = _is_online_rl_trainer(type(self))
        training_args = kwargs.get("args", args[2] if online and len(args) > 2 else None)
        beta = getattr(training_args, "beta", 0.0) if online else 0.0
        if beta:
            training_args.beta = 0.0  # TRL builds no reference of its own (a second copy, from the hub)
        try:
            super().__init__(*args, **kwargs)
        finally:
            if vouched:
                model._hf_peft_config_loaded = False
            if beta:
                training_args.beta = beta
        if beta:
            self.beta = beta
            self.ref_model = OriginalModel(adapter) if adapter is not None else None  # method=: set once attached

    # -- optimizer -------------------------------------------------------------------------
    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self._lorakit_steps = num_training_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """``adapter.optimizer`` with the TrainingArguments' AdamW settings (once per run)."""
        if self.optimizer is None:
            args = self.args
            if args.world_size > 1 and parts_of(self.adapter.spec).schedule.resizes:
                raise LorakitError(f"schedule {self.adapter.spec.schedule!r} replaces adapter parameters mid-run, "
                                   "which the Trainer's distributed wrapper cannot follow; use lorakit train (it "
                                   "rebuilds the wrapper) or train in one process")
            if self.is_deepspeed_enabled:
                refuse_if_bypassed(self.adapter.spec, "DeepSpeed's ZeRO optimizer")
            self.adapter.set_total_steps(self._lorakit_steps or self.state.max_steps)
            self.optimizer = self.adapter.optimizer(lr=args.learning_rate, weight_decay=args.weight_decay,
                                                    betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        return self.optimizer

    # -- checkpoints -----------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The adapter (see ``_save``), from every process: under FSDP its shards are gathered."""
        self._save(output_dir)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapter and its training state, not the full model (the Trainer saves the rest)."""
        tensors, training_state = self.adapter.state_dict(), self.adapter.training_state()  # collectives if sharded
        if not self.args.should_save:
            return
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".lorakit.") as tmp:  # written whole, then moved in
            self.adapter.write(Path(tmp), tensors)
            torch.save(training_state, Path(tmp) / TRAINING_STATE_FILE)
            for written in sorted(Path(tmp).iterdir()):
                os.replace(written, folder / written.name)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(str(folder))
        torch.save(self.args, folder / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """The checkpoint's adapter (structure and tensors) into ``self.adapter``."""
        if any(is_dtensor(p) for p in self.adapter.parameters()):
            raise LorakitError("resuming a Trainer run whose adapter is already sharded (FSDP) is not supported; "
                               "resume it with lorakit train and train.fsdp, or without FSDP")
        config, tensors = read_adapter(resume_from_checkpoint)
        saved = from_saved(config["method"], config["format_version"])
        given = _given_options(self.adapter.spec)
        if {key: saved.to_dict().get(key) for key in given} != given:
            raise LorakitError(f"{resume_from_checkpoint} holds a {saved.name} adapter with other options than this "
                               "one; resume with the adapter attached as in the interrupted run")
        if config["base_fingerprint"] != self.adapter.base_fingerprint:
            raise LorakitError(f"{resume_from_checkpoint} was trained on another base model; resume on the same one")
        restore(self.adapter, config, tensors, resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with self.adapter.steps_paused():  # loading may step the optimizer to create its state
            super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint:  # after the optimizer: its start resets schedule state
            self._load_training_state(checkpoint)

    def _load_training_state(self, checkpoint: str) -> None:
        """The exact ``W`` (Delta-LoRA) and the schedule's state the checkpoint keeps."""
        state_file = Path(checkpoint) / TRAINING_STATE_FILE
        if state_file.is_file():
            self.adapter.load_training_state(torch.load(state_file, map_location="cpu", weights_only=True))

    def _load_best_model(self) -> None:
        """The best checkpoint's adapter, with its exact training state (``W`` of Delta-LoRA)."""
        best = self.state.best_model_checkpoint
        if best is not None:
            self._load_from_checkpoint(best)
            self._load_training_state(best)


def _given_options(spec: Any) -> dict[str, Any]:
    """The options of an attached adapter's spec that the run does not derive (AdaLoRA's ``T``
    and its phases follow ``max_steps``)."""
    return {key: value for key, value in spec.to_dict().items() if key not in spec.derived and value is not None}


def _is_dpo_trainer(cls: type) -> bool:
    try:
        from trl import DPOTrainer
    except ImportError:
        return False
    return issubclass(cls, DPOTrainer)


def _is_online_rl_trainer(cls: type) -> bool:
    """TRL's trainers that sample completions and keep a KL term to a reference (GRPO, RLOO)."""
    try:
        from trl import GRPOTrainer, RLOOTrainer
    except ImportError:
        return False
    return issubclass(cls, (GRPOTrainer, RLOOTrainer))


@functools.cache
def with_lorakit(trainer_class: type[Trainer]) -> type[Trainer]:
    """``trainer_class`` with lorakit's optimizer, checkpoints and reference model (module docstring)."""
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
        raise LorakitError(f"with_lorakit takes a transformers.Trainer subclass, got {trainer_class!r}")
    return type(f"Lorakit{trainer_class.__name__}", (LorakitTrainerMixin, trainer_class),
                {"__module__": __name__, "__doc__": f"{trainer_class.__name__} training a lorakit adapter."})


LorakitTrainer = with_lorakit(Trainer)
