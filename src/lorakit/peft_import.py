"""Import a PEFT LoRA adapter as a lorakit adapter: ``load_peft(model, path)``.

A PEFT LoRA layer computes ``y = W x + s_l · B_l (A_l x)`` with ``s_l = α_l / r_l`` (``α_l / √r_l``
with rsLoRA), its rank ``r_l`` and ``α_l`` per layer from ``r``/``rank_pattern`` and
``lora_alpha``/``alpha_pattern``; with ``use_dora`` the row magnitude ``m`` rescales
``W + s_l·B_l A_l``. lorakit's ``lora`` form (``dora`` with DoRA) computes the same function
with the same tensors, so the import attaches that form to the layers the adapter names, gives
each its rank and scale, and copies ``A``, ``B`` (and ``m``) — the model's outputs are PEFT's.

The imported adapter trains on with any method of the same form whose init does not rewrite
``W`` (``method="lora_plus"``, ``"delta_lora"``, ``"lora_fa"``, or a schedule of the ``lora``
form), and saves, merges and exports like any lorakit adapter.

GPT-2's ``Conv1D`` layers (PEFT's ``fan_in_fan_out``) and quantized bases import too: PEFT's ``A``,
``B`` are in linear orientation either way. Refused with a one-line error: another PEFT type,
trained biases (``bias`` other than ``none``), and an adapter whose layers do not exist in
``model`` with the adapter's shapes (one made for another base). ``modules_to_save`` (modules
trained in full: a classifier head) become the adapter's ``train_modules`` with their weights.

``read_peft`` checks the folder completely before any model is needed (``lorakit import`` calls
it before loading the base), each defect a one-line ``LorakitError`` naming the file, key or
tensor: ``adapter_config.json`` must be a UTF-8 JSON object whose settings have PEFT's types
(``r`` and ``rank_pattern`` values whole numbers > 0, ``lora_alpha`` and ``alpha_pattern``
values finite numbers > 0, ``use_dora``/``use_rslora`` booleans, name lists, pattern keys valid
regular expressions); ``adapter_model.safetensors`` must be readable, its ``lora_A``/``lora_B``
float matrices of one rank per layer, the rank ``r``/``rank_pattern`` give (as PEFT requires to
load it), both present, and a DoRA magnitude (only with ``use_dora``) one entry per output row.
PEFT itself accepts ``lora_alpha`` 0 or negative (a scale of 0 switches the adapter off, a
negative one reverses it); lorakit's ``alpha`` is > 0, so such an adapter is refused. Only the
fit to the base (layer shapes, ``modules_to_save`` weights) waits for the model: ``load_peft``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .adapter import Adapter
from .api import attach
from .conv1d import Conv1D
from .data.labelled import Labels
from .errors import LorakitError
from .forms.lora import lora_scale
from .io.peft_format import CONFIG_FILE, PREFIX, WEIGHTS_FILE
from .models import hub_id
from .presets import resolve

FORMS = {False: "lora", True: "dora"}  # use_dora → the lorakit form
SUFFIXES = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_magnitude_vector": "magnitude",
            "lora_magnitude_vector.weight": "magnitude"}


Layers = dict[str, dict[str, torch.Tensor]]


def read_peft(path: str | Path) -> tuple[dict[str, Any], Layers]:
    """``(adapter_config, {layer name: {"A", "B"[, "magnitude"]}})`` of the PEFT folder ``path``;
    the weights of ``modules_to_save`` are under their module's name, role ``"saved"``: a mapping
    ``{param name: tensor}`` (see ``saved_modules``). Everything that can be checked without the
    base model is checked here (see the module docstring): a defect is a one-line error."""
    folder = Path(path)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise LorakitError(f"{folder} has no {CONFIG_FILE}; pass the folder of a PEFT adapter")
    if not weights_path.is_file():
        raise LorakitError(f"{folder} has no {WEIGHTS_FILE} (an older adapter_model.bin? load it in PEFT and "
                           "save it again with safe_serialization)")
    config = _read_config(config_path)
    check_config(config, config_path)
    saved = tuple(config.get("modules_to_save") or ())
    tensors = _read_weights(weights_path)
    layers = _layers(tensors, weights_path, saved)
    _check_ranks(layers, config, weights_path)
    modules = saved_modules(tensors, saved)
    if saved and not modules:
        raise LorakitError(f"{config_path}: modules_to_save lists {list(saved)}, but {WEIGHTS_FILE} holds no "
                           "weights of them; save the adapter again in PEFT")
    return config, {**layers, **modules}


JSON_KINDS = ((bool, "boolean"), (str, "string"), ((int, float), "number"), (list, "list"), (type(None), "null"))


def _read_config(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``adapter_config.json``); anything else is a one-line error."""
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LorakitError(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                           "save it again as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise LorakitError(f"{path} is not valid JSON ({exc}); fix it or save the adapter again in PEFT") from None
    except OSError as exc:
        raise LorakitError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
    if not isinstance(config, dict):
        kind = next(name for types, name in JSON_KINDS if isinstance(config, types))
        raise LorakitError(f"{path} holds a JSON {kind}, not an object of LoRA settings; pass the folder of a "
                           "PEFT adapter or save the adapter again in PEFT")
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; a damaged file is a one-line error."""
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (truncated, not safetensors), OSError
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LorakitError(f"{path} is not a readable safetensors file ({reason}); it is truncated or of another "
                           "format: copy it again or save the adapter again in PEFT") from None


def _saved_module(name: str, saved: tuple[str, ...]) -> str | None:
    """The ``modules_to_save`` module that the tensor ``name`` (no prefix) belongs to, or ``None``."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if any(module == s or module.endswith("." + s) for s in saved):
            return module
    return None


def saved_modules(tensors: dict[str, torch.Tensor], saved: tuple[str, ...]) -> Layers:
    """``{module name: {"saved": {param: tensor}}}`` for the ``modules_to_save`` weights."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        module = None if any(name.endswith("." + suffix) for suffix in SUFFIXES) else _saved_module(name, saved)
        if module is not None:
            modules.setdefault(module, {})[name[len(module) + 1:]] = tensor
    return {module: {"saved": params} for module, params in modules.items()}


def _layers(tensors: dict[str, torch.Tensor], path: Path, saved: tuple[str, ...]) -> Layers:
    """``{layer name: {role: tensor}}`` of the LoRA tensors in the safetensors file ``path``, each
    checked by ``_check_tensor``; every layer has both ``A`` and ``B``."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        for suffix, role in SUFFIXES.items():
            if name.endswith("." + suffix):
                _check_tensor(tensor, key, role, path)
                layers.setdefault(name[: -len(suffix) - 1], {})[role] = tensor
                break
        else:
            if _saved_module(name, saved) is None:
                raise LorakitError(f"{path}: tensor {key!r} is not a LoRA weight or one of modules_to_save (a "
                                   "trained bias?); lorakit imports LoRA adapters with bias 'none'")
    if not layers:
        raise LorakitError(f"{path} holds no LoRA weights (no lora_A/lora_B tensors); pass the folder of a PEFT "
                           "LoRA adapter")
    for name, roles in layers.items():
        missing = [f"lora_{role}" for role in ("A", "B") if role not in roles]
        if missing:
            raise LorakitError(f"{path}: layer {name} has no {missing[0]} (only {', '.join(sorted(roles))}); the "
                               "adapter is incomplete: copy it again or save it again in PEFT")
    return layers


ROLE_NAMES = {"A": "lora_A (rank × in_features)", "B": "lora_B (out_features × rank)",
              "magnitude": "DoRA magnitude (one entry per output row)"}


def _size(shape: Any) -> str:
    """``4×64`` for the shape ``(4, 64)``; ``scalar`` for ``()``."""
    return "×".join(str(n) for n in shape) or "scalar"


def _check_tensor(tensor: torch.Tensor, key: str, role: str, path: Path) -> None:
    """A LoRA tensor is a non-empty float matrix (a vector for the DoRA magnitude)."""
    if not tensor.is_floating_point():
        raise LorakitError(f"{path}: tensor {key!r} is {str(tensor.dtype).removeprefix('torch.')}, not floating "
                           "point; save the adapter again in PEFT with float weights")
    dims = 1 if role == "magnitude" else 2
    if tensor.dim() != dims or 0 in tensor.shape:
        raise LorakitError(f"{path}: tensor {key!r} has shape {_size(tensor.shape)}, but a {ROLE_NAMES[role]} is "
                           f"a non-empty {'vector' if dims == 1 else 'matrix'}; the adapter is damaged: save it "
                           "again in PEFT")


def _check_ranks(layers: Layers, config: dict[str, Any], path: Path) -> None:
    """Every layer's ``lora_A`` (r×in) and ``lora_B`` (out×r) have the rank ``r``/``rank_pattern``
    give it (when ``r`` is recorded), and a DoRA magnitude one entry per row of ``lora_B``."""
    patterns, default, config_file = config.get("rank_pattern") or {}, config.get("r"), path.with_name(CONFIG_FILE)
    for name, roles in layers.items():
        (rank, fan_in), (fan_out, rank_b) = roles["A"].shape, roles["B"].shape
        if rank != rank_b:
            raise LorakitError(f"{path}: layer {name} has lora_A {rank}×{fan_in} (rank {rank}) but lora_B "
                               f"{fan_out}×{rank_b} (rank {rank_b}); the adapter is damaged: save it again in PEFT")
        expected = pattern_value(patterns, name, default)
        if expected is not None and rank != expected:
            raise LorakitError(f"{path}: layer {name} has rank {rank} (lora_A {rank}×{fan_in}), but {config_file} "
                               f"gives it r={expected} (r / rank_pattern); correct r or rank_pattern there")
        _check_magnitude(roles.get("magnitude"), name, fan_out, bool(config.get("use_dora")), path)


def _check_magnitude(magnitude: torch.Tensor | None, name: str, rows: int, use_dora: bool, path: Path) -> None:
    """A DoRA magnitude only with ``use_dora``, with one entry per output row (``rows``)."""
    if magnitude is None:
        return
    if not use_dora:
        raise LorakitError(f"{path}: layer {name} has a DoRA magnitude, but {path.with_name(CONFIG_FILE)} does not "
                           "set use_dora: true; set it there if the adapter is a DoRA adapter")
    if magnitude.shape[0] != rows:
        raise LorakitError(f"{path}: layer {name} has a DoRA magnitude of {magnitude.shape[0]} entries, but lora_B "
                           f"has {rows} rows; the adapter is damaged: save it again in PEFT")


OUTPUT_LAYERS = ("classifier.weight", "score.weight", "out_proj.weight")  # a head's last layer, by name


def head_labels(config: dict[str, Any], layers: Layers, path: str | Path) -> Labels | None:
    """The classes of a ``SEQ_CLS`` adapter's head: as many as the rows of its output layer
    (``classifier.weight``, ``score.weight``, ``classifier.out_proj.weight``), named by their ids
    (PEFT does not record names); ``None`` for other task types."""
    if config.get("task_type") != "SEQ_CLS":
        return None
    weights = {f"{name}.{key}": tensor for name, roles in layers.items() if "saved" in roles
               for key, tensor in roles["saved"].items()}
    outputs = [weights[key] for suffix in OUTPUT_LAYERS for key in sorted(weights)
               if key == suffix or key.endswith("." + suffix)]
    if not outputs:
        raise LorakitError(f"{path} is a SEQ_CLS adapter without its head's output layer ({', '.join(OUTPUT_LAYERS)} "
                           "in modules_to_save); save it in PEFT with its classifier")
    if outputs[0].dim() != 2:
        raise LorakitError(f"{Path(path) / WEIGHTS_FILE}: the head's output layer weight has shape "
                           f"{_size(outputs[0].shape)}, not classes × features; save the adapter again in PEFT")
    count = outputs[0].shape[0]
    return Labels(None) if count == 1 else Labels(tuple(str(i) for i in range(count)))


def check_config(config: dict[str, Any], path: str | Path) -> None:
    """Refuse what a lorakit adapter cannot represent (see the module docstring) and settings of
    the wrong type; ``path`` (the config file) names them in the messages."""
    if config.get("peft_type") != "LORA":
        raise LorakitError(f"{path}: peft_type {_shown(config, 'peft_type')}, not \"LORA\"; lorakit imports PEFT "
                           "LoRA adapters")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        key = "bias" if config.get("bias", "none") != "none" else "lora_bias"
        raise LorakitError(f"{path} trains biases ({key} {_shown(config, key)}); lorakit adapters hold no biases")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init != "gaussian":  # pissa, olora, corda, loftq, eva: unconverted
        raise LorakitError(f"{path} was saved with init_lora_weights={init!r}, so it applies to PEFT's residual "
                           "base, not the original model; save it in PEFT with "
                           "path_initial_model_for_weight_conversion, then import that")
    for key, (test, requirement) in SETTINGS.items():
        if key in config and not test(config[key]):
            raise LorakitError(f"{path}: {key} {_shown(config, key)}, but it must be {requirement}; correct it "
                               "there or save the adapter again in PEFT")
    for key, (test, requirement) in PATTERNS.items():
        _check_pattern(config, key, test, requirement, path)


def _shown(config: dict[str, Any], key: str) -> str:
    """``is <the JSON value>`` (shortened) of ``config[key]``, or ``is missing``."""
    if key not in config:
        return "is missing"
    text = json.dumps(config[key])  # shown, not written
    return f"is {text if len(text) <= 60 else text[:57] + '...'}"


def _number(value: Any) -> bool:
    """A finite JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))


def _names(value: Any) -> bool:
    """A list of module names."""
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``test``, or ``null`` (PEFT's default)."""
    return lambda value: value is None or test(value)


def _is(kind: type) -> Callable[[Any], bool]:
    """A test for a value of type ``kind``."""
    return lambda value: isinstance(value, kind)


def _rank(value: Any) -> bool:
    """A whole number > 0 (PEFT's ``r``)."""
    return _number(value) and isinstance(value, int) and value > 0


def _alpha(value: Any) -> bool:
    """A finite number > 0 (lorakit's ``alpha``; see the module docstring)."""
    return _number(value) and value > 0


SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {  # the keys the import reads: value test, requirement
    "r": (_rank, "a whole number > 0"),
    "lora_alpha": (_alpha, "a finite number > 0"),
    "lora_dropout": (_optional(lambda value: _number(value) and 0 <= value < 1), "a number ≥ 0 and < 1"),
    "use_dora": (_optional(_is(bool)), "true or false"),
    "use_rslora": (_optional(_is(bool)), "true or false"),
    "target_modules": (_optional(lambda value: isinstance(value, str) or _names(value)),
                       "a list of module names or a regular expression"),
    "modules_to_save": (_optional(_names), "a list of module names"),
    "base_model_name_or_path": (_optional(_is(str)), "a model name or path"),
    "task_type": (_optional(_is(str)), "a task name such as \"CAUSAL_LM\""),
}
PATTERNS = {"rank_pattern": (_rank, "a whole number > 0"), "alpha_pattern": (_alpha, "a finite number > 0")}


def _check_pattern(config: dict[str, Any], key: str, test: Callable[[Any], bool], requirement: str,
                   path: str | Path) -> None:
    """``config[key]`` (``rank_pattern``, ``alpha_pattern``) is null or maps layer names (regular
    expressions) to values that pass ``test``."""
    patterns = config.get(key)
    if patterns is None:
        return
    if not isinstance(patterns, dict):
        raise LorakitError(f"{path}: {key} {_shown(config, key)}, but it must be a mapping from layer name (or "
                           f"regular expression) to {requirement}; correct it there or save the adapter again in PEFT")
    for name, value in patterns.items():
        try:
            re.compile(name)
        except re.error as exc:
            raise LorakitError(f"{path}: {key} key {name!r} is not a regular expression ({exc}); correct it there "
                               "or save the adapter again in PEFT") from None
        if not test(value):
            raise LorakitError(f"{path}: {key}[{name!r}] {_shown(patterns, name)}, but it must be {requirement}; "
                               "correct it there or save the adapter again in PEFT")


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` value for layer ``name``: the first key that is
    the name, or a regular expression matching its end after a dot."""
    for key, value in patterns.items():
        if name == key or re.fullmatch(rf"(.*\.)?(?:{key})", name):
            return value
    return default


def load_peft(model: nn.Module, path: str | Path, method: str = "lora", **overrides: Any) -> Adapter:
    """Attach the PEFT LoRA adapter saved at ``path`` to ``model`` as a lorakit adapter of ``method``
    (a preset of the ``lora`` form, ``dora`` for DoRA adapters; extra options in ``overrides``)."""
    config, read = read_peft(path)
    layers = {name: roles for name, roles in read.items() if "saved" not in roles}
    saved = {name: roles["saved"] for name, roles in read.items() if "saved" in roles}
    _check_base(model, layers, config, Path(path) / WEIGHTS_FILE)
    _check_saved(model, saved, config, Path(path) / WEIGHTS_FILE)
    use_dora, rslora = bool(config.get("use_dora")), bool(config.get("use_rslora"))
    method = "dora" if use_dora and method == "lora" else method
    form = overrides.get("form", resolve(method).form)
    if form != FORMS[use_dora]:
        raise LorakitError(f"a PEFT {'DoRA' if use_dora else 'LoRA'} adapter imports as lorakit's "
                           f"{FORMS[use_dora]!r} form; method {method!r} uses the {form!r} form")
    spec = resolve(method, init="kaiming", rank=max(roles["A"].shape[0] for roles in layers.values()),
                   alpha=float(config.get("lora_alpha", 8)), rslora=rslora,
                   dropout=float(config.get("lora_dropout") or 0.0), targets=sorted(layers),
                   train_modules=sorted(saved), **overrides)
    adapter = attach(model, spec)
    for name, params in saved.items():
        module = adapter.full_modules[name]
        device = next(module.parameters()).device
        module.load_state_dict({**module.state_dict(), **{key: value.to(device) for key, value in params.items()}})
    alphas, default_alpha = config.get("alpha_pattern") or {}, float(config.get("lora_alpha", 8))
    for name, roles in layers.items():
        form = adapter.layers[name].form
        rank = roles["A"].shape[0]
        form.set_rank(rank)
        form.scale = lora_scale(float(pattern_value(alphas, name, default_alpha)), rank, rslora)
        device = form.A.device
        state = {**form.state_dict(), **{role: t.to(device, torch.float32) for role, t in roles.items()}}
        form.load_state_dict(state)
    return adapter


def _check_base(model: nn.Module, layers: dict[str, dict[str, torch.Tensor]], config: dict[str, Any],
                path: str | Path) -> None:
    """Refuse an adapter made for another base: every layer must exist with the adapter's shapes."""
    modules = dict(model.named_modules())
    for name, roles in layers.items():
        module = modules.get(name)
        expected = (roles["B"].shape[0], roles["A"].shape[1])
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise LorakitError(f"{path} adapts {name}, which this model has no linear layer of; "
                               f"{_another_base(config)}")
        shape = (module.weight.shape[1], module.weight.shape[0]) if isinstance(module, Conv1D) \
            else (module.out_features, module.in_features)  # (a 4-bit weight is stored packed)
        if shape != expected:
            raise LorakitError(f"{path} adapts {name} as {expected[0]}×{expected[1]}, but this model's layer is "
                               f"{shape[0]}×{shape[1]}; {_another_base(config)}")
    recorded = config.get("base_model_name_or_path")
    own = getattr(getattr(model, "config", None), "_name_or_path", None)
    own = hub_id(own)  # what export records
    if recorded and own and Path(str(recorded)).name != Path(str(own)).name:
        warnings.warn(f"{path} was made for {recorded}, this model is {own}; the shapes fit, so it is loaded",
                      stacklevel=2)


def _check_saved(model: nn.Module, saved: dict[str, dict[str, torch.Tensor]], config: dict[str, Any],
                 path: str | Path) -> None:
    """Refuse ``modules_to_save`` weights that ``model`` has no module or parameter of, or of another shape."""
    modules = dict(model.named_modules())
    for name, params in saved.items():
        own = modules[name].state_dict() if name in modules else {}
        for key, tensor in params.items():
            if key not in own:
                raise LorakitError(f"{path} saves {name}.{key} (modules_to_save), which this model has no weight "
                                   f"of; {_another_base(config)}")
            if own[key].shape != tensor.shape:
                raise LorakitError(f"{path} saves {name}.{key} (modules_to_save) as {_size(tensor.shape)}, but this "
                                   f"model's is {_size(own[key].shape)}; {_another_base(config)}")


def _another_base(config: dict[str, Any]) -> str:
    """The end of a message refusing an adapter made for another base (the one it records, if any)."""
    base = config.get("base_model_name_or_path")
    return f"the adapter was made for another base model{f' ({base})' if base else ''}: load it on that one"
