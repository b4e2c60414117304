"""Attaching an adapter to a model, and loading a saved one: ``attach`` and ``load``.

The attach order is code, one step per line in ``_build``: find targets → derive what depends
on them (``presets.complete``) → check them → fingerprint the base → shared form state (VeRA) →
wrap → init (which may rewrite ``W``) → form post-init (DoRA's magnitude) → the ``Adapter`` with
its own recipe and schedule → schedule prepare → freeze → recipe prepare (LoRA-FA freezes ``A``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter import Adapter, Factors, initial_factors, new_form
from .core.component import FACTORS, MAGNITUDE, RANK_WITHIN_SHAPE
from .core.spec import MethodSpec
from .errors import LorakitError
from .full_modules import find_full_modules
from .heads import head_modules, task_record
from .inits.calibration import DTYPES as CALIBRATION_DTYPES
from .inits.calibration import GATHERERS, WEIGHTS, FullPrecision, full_precision
from .io.adapter_files import read_adapter
from .io.fingerprint import fingerprint
from .layer import AdaptedLinear
from .presets import complete, from_saved, parts_of, resolve
from .quantized import add_to_base, base_weight, first_quantization, is_quantized, prepare, requantize
from .status import phase
from .targeting import find_targets, set_submodule


def attach(model: nn.Module, method: str | MethodSpec = "lora", init_data: Iterable[Mapping[str, Any]] | None = None,
           **overrides: Any) -> Adapter:
    """Attach the adapter ``method`` (a preset name, with option overrides) to ``model``.

    Right after attaching, the model's outputs equal the base model's for every method. On a
    sequence classifier, ``train_modules`` defaults to its head (``lorakit.heads``).

    ``init_data``: batches (dicts with ``input_ids``, and ``attention_mask``/``labels`` where
    some tokens do not count) for an init that reads data (``eva``); its first ``init_batches``
    are read once, before anything is attached.
    """
    return _build(model, resolve(method, **overrides), for_training=True, init_data=init_data)


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


def _build(model: nn.Module, spec: MethodSpec, loaded: Factors | None = None,
           expected_fingerprint: str | None = None, only: set[str] | None = None,
           for_training: bool = False, expected_quantization: Any = False,
           init_data: Iterable[Mapping[str, Any]] | None = None,
           loaded_residuals: Factors | None = None) -> Adapter:
    _refuse_if_adapted(model)
    head = head_modules(model)  # a sequence classifier's head always trains (a frozen new head is noise)
    if not set(head) <= set(spec.train_modules):
        spec = resolve(spec, train_modules=tuple(dict.fromkeys([*spec.train_modules, *head])))
    targets = find_targets(model, spec.targets, keep_out=spec.train_modules)
    spec = complete(spec, layers=len(targets))
    _check_targets(targets, spec, for_training)
    base_fingerprint = fingerprint(targets)
    if expected_quantization is not False:
        _check_quantization(expected_quantization, targets)
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
    statistics = _calibrate(model, targets, spec, init_data, loading=loaded is not None)
    shared = parts_of(spec).form.shared(spec, [base for _, base in targets])
    layers = {name: _wrap(model, name, base, spec, shared) for name, base in targets}
    ranks = parts_of(spec).init.ranks(statistics, spec.options()) if statistics and loaded is None else None
    initial, residuals = _initialise(layers, spec, loaded, statistics, ranks, loaded_residuals or {})
    for layer in layers.values():
        layer.form.post_init(layer.base_layer)
    adapter = Adapter(model, spec, layers, base_fingerprint, initial)
    adapter.residuals = residuals
    for name in [name for name, rank in (ranks or {}).items() if rank == 0]:
        adapter.remove_layer(name)
    adapter.schedule.prepare(adapter)
    _freeze(model, layers)
    adapter.full_modules = find_full_modules(model, spec.train_modules, set(layers))
    for module in adapter.full_modules.values():
        module.requires_grad_(True)
    adapter.recipe.prepare(adapter)
    return adapter


def _calibrate(model: nn.Module, targets: list[tuple[str, nn.Linear]], spec: MethodSpec,
               init_data: Iterable[Mapping[str, Any]] | None, loading: bool) -> dict[str, Any]:
    """The calibration phase of an init that reads data: each target's statistics over the first
    ``init_batches`` of ``init_data`` (``{}`` for an init that reads nothing, and when ``loading``:
    the factors are saved). The checkpoint's ``weights`` are read at attach and at load alike."""
    init = parts_of(spec).init
    reads = init.reads_of(spec.options())
    if reads == WEIGHTS:
        quantized = sum(is_quantized(module) for _, module in targets)
        with phase("calibrate", f"reading the full-precision weights of {quantized} layers from the checkpoint"
                   if quantized else None):
            return full_precision(model, targets)
    if not reads or loading:
        return {}
    if init_data is None:
        raise LorakitError(f"init {spec.init!r} reads the training data before step 0; pass init_data= (batches) to "
                           "attach (lorakit train, compare and tune pass the run's own)")
    batches = list(itertools.islice(iter(init_data), spec.init_batches))
    if len(batches) < spec.init_batches:
        raise LorakitError(f"init {spec.init!r} needs init_batches = {spec.init_batches} batches but the data gives "
                           f"{len(batches)}; lower method.init_batches or give more data")
    with phase("calibrate", f"calibrating init {spec.init}: the {reads.replace('_', ' ')} of {len(targets)} "
               f"layers over {len(batches)} batches"):
        return GATHERERS[reads](model, targets, batches, CALIBRATION_DTYPES[spec.calibration_dtype])


def _check_targets(targets: list[tuple[str, nn.Linear]], spec: MethodSpec, for_training: bool) -> None:
    """Refuse targets the method cannot adapt, before anything is attached."""
    if any(base.weight.is_meta for _, base in targets):
        raise LorakitError("the model's weights are on the meta device (not loaded); load real weights first")
    for name, module in targets:
        if is_quantized(module):
            prepare(module, name)
    parts = parts_of(spec)
    quantized = [name for name, module in targets if is_quantized(module)]
    plain = [name for name, module in targets if not is_quantized(module)]
    if parts.init.quantized_only and plain:
        raise LorakitError(f"init {spec.init!r} fits the adapter to a quantized base, but layer {plain[0]!r} is not "
                           "quantized; load the base with model.quantize: nf4 or int8")
    if quantized and parts.init.rewrites_base and _residual_mode(spec) == "correction" \
            and MAGNITUDE in parts.form.capabilities:
        raise LorakitError(f"{spec.form} normalises W + s·B A by rows, which a spectral residual kept as a path "
                           "beside the quantized W does not give; use spectral_residual: requantize")
    if RANK_WITHIN_SHAPE in parts.form.capabilities:
        for name, module in targets:
            out_features, in_features = module.out_features, module.in_features
            if spec.rank > min(out_features, in_features):
                raise LorakitError(
                    f"rank {spec.rank} exceeds layer {name!r} of shape ({out_features}, {in_features}); "
                    f"use rank <= {min(out_features, in_features)} or leave that layer out of targets"
                )
    parts.schedule(spec).check_targets(targets)
    if for_training:  # a loaded adapter is checked when its optimizer is built
        parts.optimizer(spec).check_targets(targets)


def _check_quantization(expected: dict[str, Any] | None, targets: list[tuple[str, nn.Linear]]) -> None:
    """Refuse a base quantized otherwise than the one the adapter was trained on."""
    found = first_quantization(module for _, module in targets)
    if expected is not None:  # the saved record also names the dtype the base was loaded in
        expected = {key: expected.get(key) for key in ("type", "blocksize", "compute_dtype")}
    if found != expected:
        def said(q: dict[str, Any] | None) -> str:
            return "a full-precision base" if q is None else f"a {q['type']} base (block size {q['blocksize']}, " \
                f"compute dtype {q['compute_dtype']})"
        raise LorakitError(f"this adapter was trained on {said(expected)}, but the model is {said(found)}; load the "
                           "base as in training (model.quantize)")


def _check_task(saved: dict[str, Any], model: nn.Module, path: str | Path) -> None:
    """Refuse a model whose head is not the one the adapter was trained with."""
    own = task_record(model) or {"type": "causal_lm"}
    if own != saved:
        def said(record: dict[str, Any]) -> str:
            return {"causal_lm": "a causal LM", "regression": "a regression head"}.get(
                record["type"], f"a classifier of {len(record.get('labels', []))} classes "
                                f"({', '.join(record.get('labels', [])[:6])})")
        raise LorakitError(f"{path} was trained on {said(saved)}, but the model is {said(own)}; load the base with "
                           "the adapter's head (lorakit.loading.load_adapter_on_base, or load_model(..., labels=...))")


def _refuse_if_adapted(model: nn.Module) -> None:
    if any(isinstance(m, AdaptedLinear) for m in model.modules()):
        raise LorakitError(
            "this model already has a lorakit adapter; merge_and_unload() it or start from a fresh model"
        )


def _wrap(model: nn.Module, name: str, base: nn.Linear, spec: MethodSpec, shared: Any) -> AdaptedLinear:
    layer = AdaptedLinear(base, new_form(spec, base, shared, base.training))
    layer.train(base.training)  # a model attached in eval mode stays in eval mode (no dropout)
    set_submodule(model, name, layer)
    return layer


def _initialise(layers: dict[str, AdaptedLinear], spec: MethodSpec, loaded: Factors | None,
                statistics: dict[str, Any], ranks: dict[str, int] | None,
                loaded_residuals: Factors) -> tuple[Factors, Factors]:
    """Set every layer's factors (fresh from the init, with the layer's calibration ``statistics``
    and rank from ``ranks`` where the init sets them, or ``loaded`` initial ones) and rewrite W;
    the initial factors and the residual pairs (``_rewrite_base``) of an init that rewrites W."""
    initial: Factors = {}
    residuals: Factors = {}
    parts = parts_of(spec)
    if FACTORS not in parts.form.capabilities:
        return initial, residuals
    for name, layer in layers.items():
        base, source = layer.base_layer, statistics.get(name)
        if loaded is None:
            if ranks is not None and ranks[name] not in (0, layer.form.rank):
                layer.form.set_rank(ranks[name])
            weight = source.weight if isinstance(source, FullPrecision) else base_weight(base)
            B, A = initial_factors(layer.form, weight, spec, name, source)
            layer.form.set_factors(B, A)
        if parts.init.rewrites_base:
            B0, A0 = ((t.to(base.weight.device) for t in loaded[name]) if loaded is not None
                      else (B.clone(), A.clone()))
            residual = loaded_residuals.get(name) if loaded is not None else getattr(source, "residual", None)
            _rewrite_base(layer, (B0, A0), source, residual, _residual_mode(spec))
            initial[name] = (B0, A0)
            if residual is not None:
                residuals[name] = residual
    return initial, residuals


def _rewrite_base(layer: AdaptedLinear, pair: tuple[torch.Tensor, torch.Tensor], source: Any,
                  residual: tuple[torch.Tensor, torch.Tensor] | None, mode: str | None) -> None:
    """Take ``s·B₀A₀`` (``pair``) out of the layer's ``W``: ``W ← W − s·B₀A₀`` (requantized on a
    quantized base; loading repeats it bit for bit); on a quantized base with ``correction``, a
    frozen ``−s·B₀A₀`` path beside ``W``; from the checkpoint's full-precision ``W`` (``source``),
    ``W ← q(W − s·P)`` with ``P`` the ``residual`` pair (LoftQ's ``B_{T−1}A_{T−1}``) or ``B₀A₀``."""
    base, scale = layer.base_layer, layer.form.scale
    if isinstance(source, FullPrecision):
        B, A = residual if residual is not None else pair
        requantize(base, source.weight - scale * (B.to(source.weight) @ A.to(source.weight)))
    elif is_quantized(base) and mode == "correction":
        layer.paths = [(*pair, -scale)]
    else:
        add_to_base(base, [(*pair, -scale)])


def _residual_mode(spec: MethodSpec) -> str | None:
    """``spectral_residual`` of a spectral init (``None`` for an init without that option: LoftQ)."""
    return spec.options().get("spectral_residual")


def _freeze(model: nn.Module, layers: dict[str, AdaptedLinear]) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in layers.values():
        for param in layer.form.parameters():
            param.requires_grad_(True)


def _load(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path) -> Adapter:
    _check_task(config.get("task") or {"type": "causal_lm"}, model, path)
    spec = from_saved(config["method"], config["format_version"])
    built = [*config["targets"], *config.get("removed", [])]
    initial = {
        name: (tensors[f"{name}.initial.B"], tensors[f"{name}.initial.A"])
        for name in built if f"{name}.initial.B" in tensors
    }
    residuals = {
        name: (tensors[f"{name}.residual.B"], tensors[f"{name}.residual.A"])
        for name in built if f"{name}.residual.B" in tensors
    }
    adapter = _build(model, spec, loaded=initial if parts_of(spec).init.rewrites_base else {},
                     expected_fingerprint=config["base_fingerprint"], only=set(built),
                     expected_quantization=config.get("quantization"), loaded_residuals=residuals)
    restore(adapter, config, tensors, path)
    return adapter


def restore(adapter: Adapter, config: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Give ``adapter`` — built for the saved method on the same base — the saved structure (layers
    a schedule removed, per-layer ranks, shared forms) and tensors; how ``load`` ends, and how a
    Trainer resumes into the adapter it was given."""
    for name in config.get("removed", []):  # the same arithmetic as during training: bit-identical base weights
        if name in adapter.layers:
            adapter.remove_layer(name)
    if set(adapter.layers) != set(config["targets"]):
        raise LorakitError(f"{path}: the adapter's layers do not match this model's targets; load it onto the "
                           "model it was trained on")
    _restore_shapes(adapter, config)
    for name, owner in config.get("shared", {}).items():
        adapter.share_form(name, owner)
    device = next(iter(adapter.layers.values())).base_layer.weight.device
    adapter.load_state_dict({k: v.to(device) for k, v in tensors.items()})
    adapter.recipe.on_load(adapter)


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
        if adapter.schedule.uses_gates():
            form.set_gate(0.0 if name in gated else None)
