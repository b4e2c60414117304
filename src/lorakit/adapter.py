"""Attaching, saving, loading and merging an adapter: the ``Adapter`` object.

The attach order is code, one step per line in ``_build``: find targets → fingerprint the base
→ shared form state (VeRA) → wrap → init (which may rewrite ``W``) → form post-init (DoRA's
magnitude) → schedule prepare → freeze → recipe prepare (LoRA-FA freezes ``A``). The returned ``Adapter``
owns what a user would otherwise have to remember: the optimizer's parameter groups and its
per-step hooks, saving with the provenance needed to rebuild the model, and merging.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .errors import LorakitError
from .forms import FORMS, Form
from .inits import INITS
from .inits.base import subtract_product
from .io.atomic import atomic_directory
from .io.fingerprint import fingerprint
from .layer import AdaptedLinear
from .methods import MethodSpec, resolve
from .optim import RECIPES
from .resizing import remove_layer
from .schedules import SCHEDULES
from .schedules.base import gated_forms
from .targeting import find_targets, set_submodule

WEIGHTS_FILE = "lorakit_adapter.safetensors"
CONFIG_FILE = "lorakit_adapter.json"
FORMAT_VERSION = 1
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def layer_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A generator seeded from ``(seed, layer name)``: adding a target leaves the others' init alone."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


class Adapter:
    """An adapter attached to ``model``: one ``AdaptedLinear`` per targeted layer."""

    def __init__(self, model: nn.Module, spec: MethodSpec, layers: dict[str, AdaptedLinear],
                 base_fingerprint: str, initial: Factors) -> None:
        self.model = model
        self.spec = spec
        self.layers = layers
        self.base_fingerprint = base_fingerprint
        self.initial = initial  # spectral inits: (B₀, A₀) per layer, taken out of the base W
        self.method_state: dict[str, torch.Tensor] = {}  # saved with the adapter (Delta-LoRA, schedules)
        self.removed: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}  # by a schedule; (B₀, A₀)
        self.shared: dict[str, str] = {}  # layer → the layer whose form it uses (LoRA-drop)
        self._attached = True

    # -- what the user trains --------------------------------------------------------------
    def forms(self) -> list[Form]:
        """Each distinct form once (layers may share one, see ``shared``)."""
        return list({id(layer.form): layer.form for layer in self.layers.values()}.values())

    def parameters(self) -> list[nn.Parameter]:
        """The trainable adapter parameters (and nothing else of the model)."""
        return [p for form in self.forms() for p in form.parameters() if p.requires_grad]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer(self, lr: float, weight_decay: float = 0.0,
                  optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                  **kwargs: Any) -> torch.optim.Optimizer:
        """A torch optimizer with the recipe's parameter groups and step hooks installed."""
        self._check_attached()
        _check_optimizer_args(lr, weight_decay, optimizer_cls)
        half = sorted({str(p.dtype).removeprefix("torch.") for p in self.parameters() if p.dtype != torch.float32})
        if half:
            raise LorakitError(f"the adapter's parameters are {', '.join(half)}, not float32 (was the model cast "
                               "after attach?); attach to the model in the dtype you train it in")
        recipe = RECIPES.get(self.spec.optimizer)
        optimizer = optimizer_cls(self.param_groups(lr, weight_decay), lr=lr, weight_decay=weight_decay, **kwargs)
        recipe.install_hooks(optimizer, self)
        SCHEDULES.get(self.spec.schedule).install_hooks(optimizer, self)
        return optimizer

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The recipe's groups, plus a ``gate`` group (the schedule's ``ω``, at ``gate_lr``, no weight
        decay) for schedules with gates — present even when empty, so the structure depends on
        the method alone."""
        groups = RECIPES.get(self.spec.optimizer).param_groups(self.forms(), self.spec, lr, weight_decay)
        if SCHEDULES.get(self.spec.schedule).uses_gates:
            gates = [form.gate for form in gated_forms(self)]
            gate_lr = lr if self.spec.gate_lr is None else self.spec.gate_lr
            groups.append({"params": gates, "lr": gate_lr, "weight_decay": 0.0, "name": "gate"})
        return groups

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model without the adapters (base layers only) inside the block.

        For spectral inits the base layers hold the residual ``W − s·B₀A₀``, and after Delta-LoRA
        training the moved base weights; the block then shows that model, not the original one.
        Blocks nest: leaving an inner block keeps the adapters off.
        """
        self._check_attached()
        previous = {name: layer.enabled for name, layer in self.layers.items()}
        for layer in self.layers.values():
            layer.enabled = False
        try:
            yield
        finally:
            for name, layer in self.layers.items():
                layer.enabled = previous[name]

    # -- saving, merging -------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, keyed ``<layer>.<param>``; initial factors under ``<layer>.initial.*``."""
        tensors = {}
        for name, layer in self.layers.items():
            if name in self.shared:  # stored once, under the layer that owns the shared form
                continue
            for key, value in layer.form.state_dict().items():
                tensors[f"{name}.{key}"] = value.detach().contiguous()
        spectral_removed = {name: f for name, f in self.removed.items() if f is not None}
        for name, (B0, A0) in {**self.initial, **spectral_removed}.items():
            tensors[f"{name}.initial.B"] = B0.contiguous()
            tensors[f"{name}.initial.A"] = A0.contiguous()
        for key, value in self.method_state.items():
            tensors[key] = value.detach().contiguous()
        return tensors

    def training_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a training checkpoint keeps beyond the saved adapter, for a bit-exact resume: the
        adapted layers' base weights when the recipe changes them (Delta-LoRA), and the
        schedule's own state (AdaLoRA's importance EMAs)."""
        base = {}
        if RECIPES.get(self.spec.optimizer).changes_base:
            base = {name: layer.base_layer.weight.detach() for name, layer in self.layers.items()}
        return {"base_weights": base, "schedule": SCHEDULES.get(self.spec.schedule).checkpoint_state(self)}

    @torch.no_grad()
    def load_training_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore ``training_state`` (after ``optimizer()`` has been called, on resume)."""
        for name, weight in state.get("base_weights", {}).items():
            self.layers[name].base_layer.weight.copy_(weight)
        SCHEDULES.get(self.spec.schedule).load_checkpoint_state(self, state.get("schedule", {}))

    def config(self) -> dict[str, Any]:
        """What ``lorakit_adapter.json`` records: method, provenance, base fingerprint."""
        import transformers

        return {
            "format_version": FORMAT_VERSION,
            "method": self.spec.to_dict(),
            "components": self.spec.components(),
            "targets": {n: list(l.base_layer.weight.shape) for n, l in self.layers.items()},
            "ranks": {n: l.form.rank for n, l in self.layers.items()},
            # AdaLoRA's final rank pattern (informational: loading restores it from the masks)
            "kept_ranks": {n: l.form.kept_rank() for n, l in self.layers.items() if hasattr(l.form, "kept_rank")},
            "scales": {n: l.form.scale for n, l in self.layers.items() if hasattr(l.form, "scale")},
            "gated": [n for n, l in self.layers.items() if getattr(l.form, "gate", None) is not None],
            "removed": list(self.removed),
            "shared": dict(self.shared),
            "base_update": RECIPES.get(self.spec.optimizer).base_update_note,
            "base_fingerprint": self.base_fingerprint,
            "base_model": getattr(getattr(self.model, "config", None), "_name_or_path", None),
            "versions": {"lorakit": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        }

    def save(self, path: str | Path) -> Path:
        """Write the adapter (safetensors + JSON) atomically to the folder ``path``."""
        with atomic_directory(path, (WEIGHTS_FILE, CONFIG_FILE)) as tmp:
            self.write(tmp)
        return Path(path)

    def save_peft(self, path: str | Path, base_model: str | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
        """Write the adapter in PEFT's LoRA format, against the original base model, for PEFT and
        vLLM (see ``lorakit.io.peft_format``); atomic like ``save``."""
        from .io.peft_format import export_peft

        self._check_attached()
        return export_peft(self, path, base_model, dtype)

    def write(self, folder: Path) -> None:
        """Write the adapter files into an existing ``folder`` (not atomic; see ``save``)."""
        self._check_attached()
        tensors = {k: v.to("cpu") for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")

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
                raise LorakitError(f"the adapter tensors lack {missing[0]} (and {len(missing) - 1} more of this layer); "
                                   "pass a state_dict of an adapter with the same method and targets")
            state = {k: tensors[f"{name}.{k}"] for k in own}
            wrong = [k for k, v in own.items() if v.shape != state[k].shape]
            if wrong:
                raise LorakitError(f"{name}.{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the adapter "
                                   f"{tuple(own[wrong[0]].shape)}; pass a state_dict of an adapter with the same ranks")
            layer.form.load_state_dict(state)
            used.update(f"{name}.{k}" for k in state)
        self.method_state.update({k: v for k, v in tensors.items() if k not in used and ".initial." not in k})

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its base weight; return the plain transformers model."""
        self._check_attached()
        SCHEDULES.get(self.spec.schedule).release(self)
        for name, layer in self.layers.items():
            set_submodule(self.model, name, layer.merge())
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


def _refuse_if_adapted(model: nn.Module) -> None:
    if any(isinstance(m, AdaptedLinear) for m in model.modules()):
        raise LorakitError(
            "this model already has a lorakit adapter; merge_and_unload() it or start from a fresh model"
        )


def _check_ranks(targets: list[tuple[str, nn.Linear]], spec: MethodSpec) -> None:
    if not FORMS.get(spec.form).rank_within_shape:
        return
    rank = spec.rank
    for name, module in targets:
        out_features, in_features = module.weight.shape
        if rank > min(out_features, in_features):
            raise LorakitError(
                f"rank {rank} exceeds layer {name!r} of shape ({out_features}, {in_features}); "
                f"use rank <= {min(out_features, in_features)} or leave that layer out of targets"
            )


def new_form(spec: MethodSpec, base: nn.Linear, shared: Any, training: bool) -> Form:
    """A fresh form of ``spec`` for the base layer ``base``, on its device, in ``training`` mode."""
    form = FORMS.get(spec.form).build(base.in_features, base.out_features, spec, shared)
    return form.to(base.weight.device).train(training)


def initial_factors(form: Form, weight: torch.Tensor, spec: MethodSpec, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` drawn by ``spec``'s init for ``form`` on the base ``weight``, from the generator of
    ``(spec.seed, key)`` (``key``: the layer's name, or another name for a second adapter)."""
    generator = layer_generator(spec.seed, key, weight.device)
    return INITS.get(spec.init).factors(weight.detach().to(torch.float32), form.rank, form.scale,
                                        generator, {"pissa_niter": spec.pissa_niter})


def _wrap(model: nn.Module, name: str, base: nn.Linear, spec: MethodSpec, shared: Any) -> AdaptedLinear:
    layer = AdaptedLinear(base, new_form(spec, base, shared, base.training))
    layer.train(base.training)  # a model attached in eval mode stays in eval mode (no dropout)
    set_submodule(model, name, layer)
    return layer


def _initialise(layers: dict[str, AdaptedLinear], spec: MethodSpec, loaded: Factors | None) -> Factors:
    """Set every layer's factors (fresh from the init, or ``loaded`` initial ones) and rewrite W."""
    initial: Factors = {}
    if not FORMS.get(spec.form).has_factors:
        return initial
    for name, layer in layers.items():
        weight = layer.base_layer.weight
        if loaded is None:
            B, A = initial_factors(layer.form, weight, spec, name)
            layer.form.set_factors(B, A)
        if INITS.get(spec.init).rewrites_base:
            B0, A0 = ((t.to(weight.device) for t in loaded[name]) if loaded is not None
                      else (B.clone(), A.clone()))
            subtract_product(weight, B0, A0, layer.form.scale)
            initial[name] = (B0, A0)
    return initial


def _freeze(model: nn.Module, layers: dict[str, AdaptedLinear]) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in layers.values():
        for param in layer.form.parameters():
            param.requires_grad_(True)


def _build(model: nn.Module, spec: MethodSpec, loaded: Factors | None = None,
           expected_fingerprint: str | None = None, only: set[str] | None = None,
           for_training: bool = False) -> Adapter:
    _refuse_if_adapted(model)
    targets = find_targets(model, spec.targets)
    if any(base.weight.is_meta for _, base in targets):
        raise LorakitError("the model's weights are on the meta device (not loaded); load real weights first")
    _check_ranks(targets, spec)
    SCHEDULES.get(spec.schedule).check_targets(spec, targets)
    if for_training:  # a loaded adapter is checked when its optimizer is built
        RECIPES.get(spec.optimizer).check_targets(spec, targets)
    base_fingerprint = fingerprint(targets)
    if expected_fingerprint is not None and base_fingerprint != expected_fingerprint:
        half = any(base.weight.dtype == torch.float16 for _, base in targets)
        raise LorakitError(
            "this adapter was trained on a different base model (weight fingerprint mismatch); "
            "load it onto the model it was trained from"
            + (" (float16 rounds the weights differently: load the base in float32 or bfloat16, "
               "as in training)" if half else "")
        )
    if only is not None:  # loading an adapter from which a schedule removed layers
        targets = [(name, base) for name, base in targets if name in only]
    shared = FORMS.get(spec.form).shared(spec, [base for _, base in targets])
    layers = {name: _wrap(model, name, base, spec, shared) for name, base in targets}
    initial = _initialise(layers, spec, loaded)
    for layer in layers.values():
        layer.form.post_init(layer.base_layer)
    adapter = Adapter(model, spec, layers, base_fingerprint, initial)
    SCHEDULES.get(spec.schedule).prepare(adapter)
    _freeze(model, layers)
    RECIPES.get(spec.optimizer).prepare(adapter)
    return adapter


def attach(model: nn.Module, method: str | MethodSpec = "lora", **overrides: Any) -> Adapter:
    """Attach the adapter ``method`` (a preset name, with field overrides) to ``model``.

    Right after attaching, the model's outputs equal the base model's for every method.
    """
    return _build(model, resolve(method, **overrides), for_training=True)


REQUIRED_CONFIG_KEYS = ("method", "targets", "base_fingerprint")


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a saved adapter folder (one-line errors for a missing or damaged one)."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise LorakitError(f"{path} is not a lorakit adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LorakitError(f"{config_path} is not valid JSON ({exc}); re-save the adapter") from None
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config] if isinstance(config, dict) else ["all"]
    if missing:
        raise LorakitError(f"{config_path} is not a lorakit adapter config (missing: {', '.join(missing)}); "
                           "re-save the adapter")
    if config.get("format_version") != FORMAT_VERSION:
        raise LorakitError(f"{config_path}: unsupported adapter format {config.get('format_version')!r} "
                           f"(this lorakit reads format {FORMAT_VERSION}); use the lorakit version that saved it")
    return config


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON config and tensors of a saved adapter folder (one-line errors for damaged files)."""
    config = read_adapter_config(path)
    weights_path = Path(path) / WEIGHTS_FILE
    try:
        return config, load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
        raise LorakitError(f"{weights_path} is not a readable safetensors file ({exc}); re-save the adapter") from None


def load(model: nn.Module, path: str | Path) -> Adapter:
    """Attach the adapter saved at ``path`` to ``model`` (the original, unmodified base)."""
    config, tensors = read_adapter(path)
    try:
        return _load(model, config, tensors, path)
    except LorakitError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # files that disagree with each other
        raise LorakitError(f"{path}: the adapter's files do not fit together ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); re-save the adapter") from None


def _load(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path) -> Adapter:
    spec = MethodSpec(**{**config["method"], "targets": _targets_from_json(config["method"]["targets"])})
    removed = config.get("removed", [])
    built = [*config["targets"], *removed]
    initial = {
        name: (tensors[f"{name}.initial.B"], tensors[f"{name}.initial.A"])
        for name in built if f"{name}.initial.B" in tensors
    }
    adapter = _build(model, resolve(spec), loaded=initial if INITS.get(spec.init).rewrites_base else {},
                     expected_fingerprint=config["base_fingerprint"], only=set(built))
    for name in removed:  # the same arithmetic as during training: bit-identical base weights
        remove_layer(adapter, name)
    if set(adapter.layers) != set(config["targets"]):
        raise LorakitError(f"{path}: the adapter's layers do not match this model's targets; load it onto the "
                           "model it was trained on")
    _restore_shapes(adapter, config)
    share_forms(adapter, config.get("shared", {}))
    device = next(iter(adapter.layers.values())).base_layer.weight.device
    adapter.load_state_dict({k: v.to(device) for k, v in tensors.items()})
    RECIPES.get(spec.optimizer).on_load(adapter)
    return adapter


def share_forms(adapter: Adapter, shared: dict[str, str]) -> None:
    """Make each layer in ``shared`` use the form of the layer it names (LoRA-drop's shared adapters)."""
    for name, owner in shared.items():
        adapter.layers[name].form = adapter.layers[owner].form
    adapter.shared.update(shared)


def final_ranks(adapter_config: dict[str, Any]) -> dict[str, int]:
    """Rank per targeted layer from an adapter's JSON (``Adapter.config()``): AdaLoRA's kept
    triplets where present, else the pair's rank; layers a schedule removed count 0."""
    kept = adapter_config.get("kept_ranks") or {}
    ranks = {name: int(kept.get(name, rank)) for name, rank in adapter_config.get("ranks", {}).items()}
    ranks.update({name: 0 for name in adapter_config.get("removed", [])})
    return ranks


def _restore_shapes(adapter: Adapter, config: dict[str, Any]) -> None:
    """Per-layer ranks, scales and gates as saved (rank schedules change them during training)."""
    gated = set(config.get("gated", []))
    for name, layer in adapter.layers.items():
        form = layer.form
        rank = config.get("ranks", {}).get(name, form.rank)
        if rank != form.rank:
            form.set_rank(rank)
        if name in config.get("scales", {}):
            form.scale = config["scales"][name]
        if hasattr(form, "set_gate"):
            form.set_gate(0.0 if name in gated else None)


def _targets_from_json(targets: str | list[str]) -> str | tuple[str, ...]:
    return targets if isinstance(targets, str) else tuple(targets)
