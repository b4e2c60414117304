"""The ``Adapter``: what attaching returns, and what it owns.

An adapter owns its components — one optimizer-recipe instance and one rank-schedule instance,
created for it — and what a user would otherwise have to remember: the optimizer's parameter
groups and the per-step hooks in the right order (recipe before schedule: LoRA-FA projects and
Delta-LoRA snapshots before the step, AdaLoRA reads gradients before ``zero_grad``), structural
changes during training (removing, resizing, replacing or sharing a layer's form, then pointing
the optimizer at the new parameters), saving with the provenance needed to rebuild the model,
and merging. Components see it through ``lorakit.core.protocol.AdapterView``.

Optimizer-state rule after a structural change: ``refresh_optimizer`` rebuilds every parameter
group's list from the adapter as it is now, in the order ``param_groups`` builds them (so a resumed
run's fresh optimizer has the same structure); group hyperparameters (learning rates as the LR
scheduler left them, weight decay) are kept. A parameter that survives keeps its state (moments,
step count); a resized layer's new ``A``, ``B`` start with fresh state, since Adam's moments of the
old factors have no meaningful image under the QR/SVD transform.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .conv1d import unwrapped
from .core.component import FACTORS, GATED, MASKED
from .core.distributed import copy_full, full
from .core.generators import layer_generator
from .core.spec import MethodSpec
from .core.terms import Term
from .errors import LorakitError
from .forms import Form
from .forms.lora import initial_scale
from .fused import fuse_shared_inputs
from .heads import task_record
from .io.adapter_files import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE
from .io.as_lora import export_as_lora
from .io.atomic import atomic_directory
from .io.gguf_format import export_gguf
from .io.json_text import json_text
from .io.peft_format import export_peft
from .layer import AdaptedLinear
from .presets import complete_for_run, parts_of
from .quantized import add_to_base, base_weight, first_quantization, is_quantized
from .schedules.base import gated_forms
from .targeting import set_submodule
from .version import __version__

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
FULL_PREFIX = "modules."  # saved weights of the train_modules: modules.<name>.<param>


def new_form(spec: MethodSpec, base: nn.Linear, shared: Any, training: bool) -> Form:
    """A fresh form of ``spec`` for the base layer ``base``, on its device, in ``training`` mode."""
    form = parts_of(spec).form.build(base.in_features, base.out_features, spec, shared)
    return form.to(base.weight.device).train(training)


def initial_factors(form: Form, weight: torch.Tensor, spec: MethodSpec, key: str,
                    data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` drawn by ``spec``'s init for ``form`` on the base ``weight``, from the generator of
    ``(spec.seed, key)`` (``key``: the layer's name, or another name for a second adapter);
    ``data``: the layer's calibration statistics, for an init that reads data."""
    generator = layer_generator(spec.seed, key, weight.device)
    return parts_of(spec).init.factors(weight.detach().to(torch.float32), form.rank, form.scale,
                                       generator, spec.options(), data)


class Adapter:
    """An adapter attached to ``model``: one ``AdaptedLinear`` per targeted layer."""

    def __init__(self, model: nn.Module, spec: MethodSpec, layers: dict[str, AdaptedLinear],
                 base_fingerprint: str, initial: Factors) -> None:
        parts = parts_of(spec)
        self.model = model
        self.spec = spec
        self.layers = layers
        self.base_fingerprint = base_fingerprint
        self.initial = initial  # spectral inits: (B₀, A₀) per layer, taken out of the base W
        # LoftQ: the pair (B_{T−1}, A_{T−1}) whose removal from the checkpoint's W was quantized into
        # the base, per layer built (removed ones too: loading rebuilds them before removing them)
        self.residuals: Factors = {}
        self.spectral = parts.init.rewrites_base
        self.recipe = parts.optimizer(spec)
        self.schedule = parts.schedule(spec)
        self.method_state: dict[str, torch.Tensor] = {}  # saved with the adapter (Delta-LoRA, schedules)
        self.removed: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}  # by a schedule; (B₀, A₀)
        self.shared: dict[str, str] = {}  # layer → the layer whose form it uses (LoRA-drop)
        self.full_modules: dict[str, nn.Module] = {}  # trained in full (train_modules, set by attach)
        self.structure_version = 0  # counts structural changes (a DDP wrapper must follow each one)
        self._paused = False  # see steps_paused
        self._attached = True

    # -- what the user trains --------------------------------------------------------------
    def forms(self) -> list[Form]:
        """Each distinct form once (layers may share one, see ``shared``)."""
        return list({id(layer.form): layer.form for layer in self.layers.values()}.values())

    def parameters(self) -> list[nn.Parameter]:
        """The trainable adapter parameters and those of the ``train_modules`` (nothing else of the model)."""
        return [p for form in self.forms() for p in form.parameters() if p.requires_grad] + self._full_parameters()

    def _full_parameters(self) -> list[nn.Parameter]:
        unique = {id(p): p for module in self.full_modules.values() for p in module.parameters()}  # tied: once
        return list(unique.values())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fuse_shared_inputs(self) -> int:
        """Compute ``A x`` of sibling layers that read one input (q/k/v, gate/up) as one matmul
        (``lorakit.fused``; the same maths, fewer and larger kernels); returns the number of groups
        formed (none with dropout)."""
        return fuse_shared_inputs(self.layers, self.spec.options().get("dropout", 0.0))

    def optimizer(self, lr: float, weight_decay: float = 0.0,
                  optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                  **kwargs: Any) -> torch.optim.Optimizer:
        """A torch optimizer with the recipe's parameter groups and the adapter's step hooks."""
        self._check_attached()
        _check_optimizer_args(lr, weight_decay, optimizer_cls)
        half = sorted({str(p.dtype).removeprefix("torch.") for p in self.parameters() if p.dtype != torch.float32})
        if half:
            raise LorakitError(f"the adapter's parameters are {', '.join(half)}, not float32 (was the model cast "
                               "after attach?); attach to the model in the dtype you train it in")
        optimizer = optimizer_cls(self.param_groups(lr, weight_decay), lr=lr, weight_decay=weight_decay, **kwargs)
        self.recipe.start(self)
        self.schedule.start(self)
        optimizer.register_step_pre_hook(lambda *_: self._before_step())
        optimizer.register_step_post_hook(lambda opt, *_: self._after_step(opt))
        return optimizer

    def set_total_steps(self, steps: int) -> None:
        """The run's number of optimizer steps, for the options derived from it (AdaLoRA's ``T`` and
        its phases, unless given); a run too short for the schedule is refused. A training loop
        that is not ``lorakit train`` calls this before ``optimizer()`` (the Trainer integration does)."""
        self.spec = complete_for_run(self.spec, steps)
        self.recipe.spec = self.schedule.spec = self.spec

    @contextlib.contextmanager
    def steps_paused(self) -> Iterator[None]:
        """Inside the block, optimizer steps are not training steps: the recipe and schedule hooks
        do not run (for code that steps the optimizer to create its state, as torch's
        ``set_optimizer_state_dict`` does with zero gradients)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _before_step(self) -> None:
        if self._paused:
            return
        self.recipe.before_step(self)
        self.schedule.before_step(self)

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._paused:
            return
        self.recipe.after_step(self)
        if self.schedule.after_step(self):
            self.refresh_optimizer(optimizer)
            self.structure_version += 1

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The recipe's groups at ``lr_scale × lr``, plus a ``gate`` group (the schedule's ``ω``, at
        ``gate_lr``, no weight decay) for schedules with gates — present even when empty, so the
        structure depends on the method alone."""
        lr = lr * self.spec.lr_scale  # the method's rate relative to the one given (lorakit.optimizers.base)
        groups = self.recipe.param_groups(self.forms(), lr, weight_decay)
        if self.spec.train_modules:
            groups.append({"params": self._full_parameters(), "lr": lr, "weight_decay": weight_decay,
                           "name": "modules"})
        if self.schedule.uses_gates():
            gates = [form.gate for form in gated_forms(self)]
            gate_lr = lr if self.spec.gate_lr is None else self.spec.gate_lr
            groups.append({"params": gates, "lr": gate_lr, "weight_decay": 0.0, "name": "gate"})
        return groups

    @contextlib.contextmanager
    def disabled(self, plus: Mapping[str, list[Term]] | None = None) -> Iterator[None]:
        """Run the model without the adapters (base layers only) inside the block; ``plus``: terms
        per layer name added to the base layers (a plain LoRA against them, to compare).

        For spectral inits the base layers hold the residual ``W − s·B₀A₀`` (on a quantized base with
        ``spectral_residual: correction``, ``W`` itself), and after Delta-LoRA training the moved base
        weights; the block then shows that model, not the original one (``original()`` gives the
        original). Blocks nest: leaving an inner block keeps the adapters off.
        """
        self._check_attached()
        previous = {name: (layer.enabled, layer.corrections) for name, layer in self.layers.items()}
        for name, layer in self.layers.items():
            layer.enabled, layer.corrections = False, list((plus or {}).get(name, []))
        try:
            yield
        finally:
            for name, layer in self.layers.items():
                layer.enabled, layer.corrections = previous[name]

    @contextlib.contextmanager
    def original(self, plus: Mapping[str, list[Term]] | None = None) -> Iterator[None]:
        """Run exactly the original base model inside the block (the reference of preference tuning);
        ``plus``: more terms per layer name added to it (a plain LoRA of the adapter, to compare).

        Every adapted layer computes ``W x + b`` of the model before attach: the adapter is off,
        and where the base weight was changed, the change is undone on the activations rather
        than in ``W`` — a spectral init's residual gets ``+ s·B₀(A₀ x)`` back, Delta-LoRA's moved
        ``W`` gets ``− λ·s·(B(A x) − B_K(A_K x))``. No weight is copied or written, so no second model
        is held in memory. Equal to the original to float rounding (bit for bit for the methods
        that never change ``W``); on a quantized base whose spectral residual was requantized, the
        requantized residual plus ``s·B₀A₀`` (to quantization rounding of the original). Blocks nest,
        with each other and with ``disabled()``.
        """
        self._check_attached()
        previous = {name: (layer.enabled, layer.corrections) for name, layer in self.layers.items()}
        for name, layer in self.layers.items():
            layer.enabled = False
            layer.corrections = [(B.detach(), A.detach(), -c) for B, A, c in self.base_changes(name)]
            layer.corrections += (plus or {}).get(name, [])
        try:
            yield
        finally:
            for name, layer in self.layers.items():
                layer.enabled, layer.corrections = previous[name]

    def quantized_base_terms(self, name: str) -> list[Term] | None:
        """``Σ c·B A`` = layer ``name``'s adapted weight minus its base weight now, where that base is
        ``q(W)``, the checkpoint's weight quantized as loading it quantized gives (a plain QLoRA base:
        any init that leaves ``W``, a spectral residual kept as a path, LoftQ with one iteration, whose
        ``B₀A₀`` is zero). ``None`` where it is not: a plain base, a base requantized around a spectral
        ``s·B₀A₀`` or LoftQ's ``B_{T−1}A_{T−1}``, or one the recipe moved."""
        layer = self.layers[name]
        residual = self.residuals.get(name)
        requantized = name in self.initial and not layer.paths and (residual is None or residual[0].shape[1] > 0)
        if not is_quantized(layer.base_layer) or requantized or self.recipe.base_update_terms(self, name):
            return None
        B, A = layer.form.factors()
        return [(B, A, 1.0), *layer.paths]

    def delta_terms(self, name: str) -> list[Term]:
        """``[(B, A, c), ...]`` with ``Σ c·B A`` = layer ``name``'s adapted weight minus its original
        one (DoRA: before the magnitude rescaling): the form's own term, a spectral init's
        ``−s·B₀A₀`` (in ``W`` or as a path), and how the recipe moved ``W`` (Delta-LoRA)."""
        B, A = self.layers[name].form.factors()
        return [(B, A, 1.0), *self._spectral_terms(name), *self.recipe.base_update_terms(self, name)]

    def base_changes(self, name: str) -> list[Term]:
        """``Σ c·B A`` = layer ``name``'s base weight now minus the original one: a spectral init's
        ``−s·B₀A₀`` (unless it is a path beside a quantized ``W``) and how the recipe moved ``W``."""
        spectral = [] if self.layers[name].paths else self._spectral_terms(name)  # a path leaves W as it was
        return spectral + self.recipe.base_update_terms(self, name)

    def _spectral_terms(self, name: str) -> list[Term]:
        if name not in self.initial:  # only spectral inits keep initial factors
            return []
        B0, A0 = self.initial[name]
        return [(B0, A0, -initial_scale(self.spec))]

    # -- structural changes (rank schedules) -----------------------------------------------
    def resize_layer(self, name: str, rank: int, generator: torch.Generator | None = None) -> None:
        """Set layer ``name`` to ``rank``: grow (``B A`` unchanged), shrink (best rank-``rank``
        approximation), or remove it (rank 0)."""
        if rank == 0:
            self.remove_layer(name)
        elif rank != self.layers[name].form.rank:
            self.layers[name].form.resize(rank, generator)

    @torch.no_grad()
    def remove_layer(self, name: str) -> None:
        """Drop layer ``name``'s adapter: the plain base layer goes back into the model. For a spectral
        init the part ``s·B₀A₀`` taken out of ``W`` at attach time is put back, so the layer is the
        original one again (a requantized residual: quantized once more, to quantization rounding)."""
        layer = self.layers.pop(name)
        if layer.shared_input is not None:
            layer.shared_input.drop(layer)
        initial = self.initial.pop(name, None)
        if initial is not None and not layer.paths:
            add_to_base(layer.base_layer, [(*initial, initial_scale(self.spec))])
        self.removed[name] = initial  # saved, so that loading repeats this arithmetic exactly
        set_submodule(self.model, name, unwrapped(layer.base_layer))

    def fresh_form(self, name: str, key: str) -> Form:
        """A new form for layer ``name`` with the method's init drawn from ``(seed, key)``."""
        layer = self.layers[name]
        form = new_form(self.spec, layer.base_layer, None, layer.training)
        form.set_factors(*initial_factors(form, base_weight(layer.base_layer), self.spec, key))
        return form

    def replace_form(self, name: str, form: Form) -> None:
        self.layers[name].form = form

    def share_form(self, name: str, owner: str) -> None:
        """Make layer ``name`` use the form of layer ``owner`` (LoRA-drop's shared adapters)."""
        self.layers[name].form = self.layers[owner].form
        self.shared[name] = owner

    def refresh_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Point ``optimizer``'s groups at the adapter's current parameters (see the module docstring)."""
        fresh = self.param_groups(lr=0.0, weight_decay=0.0)
        names = [group.get("name") for group in optimizer.param_groups]
        if names != [group["name"] for group in fresh]:
            raise RuntimeError(f"optimizer groups {names} do not match the adapter's {[g['name'] for g in fresh]}")
        kept = {id(p) for group in fresh for p in group["params"]}
        for param in [p for p in optimizer.state if id(p) not in kept]:
            del optimizer.state[param]
        for group, new in zip(optimizer.param_groups, fresh, strict=True):
            group["params"] = list(new["params"])

    # -- saving, merging -------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, keyed ``<layer>.<param>``; initial factors under ``<layer>.initial.*``,
        LoftQ's residual pairs under ``<layer>.residual.*``.
        Sharded parameters (FSDP2) are gathered whole: every process must call this together."""
        tensors = {}
        for name, layer in self.layers.items():
            if name in self.shared:  # stored once, under the layer that owns the shared form
                continue
            for key, value in layer.form.state_dict().items():
                tensors[f"{name}.{key}"] = full(value.detach()).contiguous()
        spectral_removed = {name: f for name, f in self.removed.items() if f is not None}
        for name, (B0, A0) in {**self.initial, **spectral_removed}.items():
            tensors[f"{name}.initial.B"] = B0.contiguous()
            tensors[f"{name}.initial.A"] = A0.contiguous()
        for name, (B, A) in self.residuals.items():
            tensors[f"{name}.residual.B"] = B.contiguous()
            tensors[f"{name}.residual.A"] = A.contiguous()
        for key, value in self.method_state.items():  # snapshots of sharded factors are shards too
            tensors[key] = full(value.detach()).contiguous()
        for name, module in self.full_modules.items():
            for key, value in module.state_dict().items():
                tensors[f"{FULL_PREFIX}{name}.{key}"] = full(value.detach()).contiguous()
        return tensors

    def training_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a training checkpoint keeps beyond the saved adapter, for a bit-exact resume: the
        adapted layers' base weights when the recipe changes them (Delta-LoRA), and the
        schedule's own state (AdaLoRA's importance EMAs)."""
        base = {}
        if self.recipe.changes_base:  # gathered whole when sharded (a collective, like state_dict)
            base = {name: full(layer.base_layer.weight.detach()) for name, layer in self.layers.items()}
        return {"base_weights": base, "schedule": self.schedule.checkpoint_state()}

    @torch.no_grad()
    def load_training_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore ``training_state`` (after ``optimizer()`` has been called, on resume)."""
        for name, weight in state.get("base_weights", {}).items():
            copy_full(self.layers[name].base_layer.weight, weight)
        device = next(iter(self.layers.values())).base_layer.weight.device
        self.schedule.load_checkpoint_state(state.get("schedule", {}), device)

    def quantization(self) -> dict[str, Any] | None:
        """How the adapted base layers are quantized (``lorakit.quantized``) and the dtype the base
        was loaded in (what quantizing it again needs), or ``None``."""
        found = first_quantization(layer.base_layer for layer in self.layers.values())
        if found is None:
            return None
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        dtype = embeddings.weight.dtype if embeddings is not None else torch.float32
        return {**found, "dtype": str(dtype).removeprefix("torch.")}

    def config(self) -> dict[str, Any]:
        """What ``lorakit_adapter.json`` records: method (every option's value), provenance, shapes."""
        import transformers

        layers = self.layers.items()
        return {
            "format_version": FORMAT_VERSION,
            "method": self.spec.to_dict(),
            "components": self.spec.components(),
            "targets": {n: [lay.base_layer.out_features, lay.base_layer.in_features] for n, lay in layers},
            "ranks": {n: lay.form.rank for n, lay in layers},
            # AdaLoRA's final rank pattern (informational: loading restores it from the masks)
            "kept_ranks": {n: lay.form.kept_rank() for n, lay in layers if MASKED in lay.form.capabilities},
            "scales": {n: lay.form.scale for n, lay in layers if FACTORS in lay.form.capabilities},
            "gated": [n for n, lay in layers if GATED in lay.form.capabilities and lay.form.gate is not None],
            "removed": list(self.removed),
            "shared": dict(self.shared),
            "train_modules": sorted(self.full_modules),
            "task": task_record(self.model) or {"type": "causal_lm"},
            "base_update": self.recipe.base_update_note,
            "quantization": self.quantization(),
            "base_fingerprint": self.base_fingerprint,
            "base_model": getattr(getattr(self.model, "config", None), "_name_or_path", None),
            "versions": {"lorakit": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        }

    def save(self, path: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the adapter (safetensors + JSON) atomically to the folder ``path`` (``tensors``: see
        ``write``)."""
        with atomic_directory(path, (WEIGHTS_FILE, CONFIG_FILE)) as tmp:
            self.write(tmp, tensors)
        return Path(path)

    def save_peft(self, path: str | Path, base_model: str | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
        """Write the adapter in PEFT's LoRA format, against the original base model, for PEFT and
        vLLM (see ``lorakit.io.peft_format``); atomic like ``save``."""
        self._check_attached()
        return export_peft(self, path, base_model, dtype)

    def save_as_lora(self, path: str | Path, rank: int | None = None, target: str = "peft",
                     base_model: str | None = None, dtype: torch.dtype = torch.float32,
                     onto: str = "original") -> dict[str, Any]:
        """Write the adapter as a plain PEFT LoRA of its whole change, whatever its method (see
        ``lorakit.io.as_lora``: ``rank`` caps each layer's rank, ``target="vllm"`` fits vLLM,
        ``onto="quantized"`` is the change against a QLoRA base); returns the conversion's record
        (per-layer errors, logit difference, changes)."""
        self._check_attached()
        return export_as_lora(self, path, rank, target, base_model, dtype, onto)

    def save_gguf(self, path: str | Path, outtype: str = "f16", rank: int | None = None) -> dict[str, Any]:
        """Write the adapter as a llama.cpp LoRA adapter: the folder ``path`` with ``adapter.gguf``,
        a ``Modelfile`` where the base GGUF is known and ``gguf_export.json`` (see
        ``lorakit.io.gguf_format``); returns that record. The folder is owned like ``lorakit export``'s."""
        self._check_attached()
        base = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        return export_gguf(self, path, base, outtype, rank)

    def write(self, folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write the adapter files into an existing ``folder`` (not atomic; see ``save``);
        ``tensors``: its ``state_dict()`` when the caller already gathered it (FSDP2)."""
        self._check_attached()
        tensors = {k: v.to("cpu") for k, v in (self.state_dict() if tensors is None else tensors).items()}
        save_file(tensors, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json_text(self.config(), indent=2) + "\n")

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy adapter tensors (as produced by ``state_dict``) into the layers."""
        self._check_attached()
        used = set()
        for name, layer in self.layers.items():
            if name in self.shared:
                continue
            own = layer.form.state_dict()
            missing = [f"{name}.{k}" for k in own if f"{name}.{k}" not in tensors]
            if missing:
                raise LorakitError(f"the adapter tensors lack {missing[0]} (and {len(missing) - 1} more of this "
                                   "layer); pass a state_dict of an adapter with the same method and targets")
            state = {k: tensors[f"{name}.{k}"] for k in own}
            wrong = [k for k, v in own.items() if v.shape != state[k].shape]
            if wrong:
                raise LorakitError(f"{name}.{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the adapter "
                                   f"{tuple(own[wrong[0]].shape)}; pass a state_dict of an adapter with the same ranks")
            layer.form.load_state_dict(state)
            used.update(f"{name}.{k}" for k in state)
        for name, module in self.full_modules.items():
            keys = [f"{FULL_PREFIX}{name}.{key}" for key in module.state_dict()]
            if any(key not in tensors for key in keys):
                raise LorakitError(f"the adapter tensors lack {FULL_PREFIX}{name} (a train_modules module); pass "
                                   "a state_dict of an adapter with the same train_modules")
            own = {key.removeprefix(f"{FULL_PREFIX}{name}."): tensors[key] for key in keys}
            module.load_state_dict(own)
            used.update(f"{FULL_PREFIX}{name}.{key}" for key in own)
        used.update(k for k in tensors if k.startswith(FULL_PREFIX))
        self.method_state.update({k: v for k, v in tensors.items()
                                  if k not in used and ".initial." not in k and ".residual." not in k})

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its base weight; return the plain transformers model."""
        self._check_attached()
        self.schedule.release(self)
        quantized = self.quantization()  # merged quantized layers come back in the dtype the base was loaded in
        dtype = getattr(torch, quantized["dtype"]) if quantized else None
        for name, layer in self.layers.items():
            set_submodule(self.model, name, layer.merge(dtype))
        self._attached = False
        return self.model

    def _check_attached(self) -> None:
        if not self._attached:
            raise LorakitError("this adapter was merged and unloaded; attach or load a new one")

    def __repr__(self) -> str:
        return (f"Adapter({self.spec.name}: {self.spec.components()}, rank={self.spec.rank}, "
                f"layers={len(self.layers)}, trainable={self.num_parameters():,})")


def _check_optimizer_args(lr: float, weight_decay: float, optimizer_cls: Any) -> None:
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise LorakitError(f"optimizer_cls must be a torch.optim.Optimizer class, got {optimizer_cls!r}")
    if not (isinstance(lr, (int, float)) and 0 <= lr < float("inf")):
        raise LorakitError(f"lr must be a finite number >= 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < float("inf")):
        raise LorakitError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
