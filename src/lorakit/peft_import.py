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
"""

from __future__ import annotations

import json
import re
import warnings
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
    ``{param name: tensor}`` (see ``saved_modules``)."""
    folder = Path(path)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise LorakitError(f"{folder} has no {CONFIG_FILE}; pass the folder of a PEFT adapter")
    if not weights_path.is_file():
        raise LorakitError(f"{folder} has no {WEIGHTS_FILE} (an older adapter_model.bin? load it in PEFT and "
                           "save it again with safe_serialization)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = load_file(str(weights_path))
    except Exception as exc:  # damaged JSON or safetensors
        raise LorakitError(f"{folder}: the PEFT adapter's files cannot be read ({type(exc).__name__}); "
                           "re-save it") from None
    saved = tuple(config.get("modules_to_save") or ())
    return config, {**_layers(tensors, folder, saved), **saved_modules(tensors, saved)}


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


def _layers(tensors: dict[str, torch.Tensor], folder: Path, saved: tuple[str, ...]) -> Layers:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        for suffix, role in SUFFIXES.items():
            if name.endswith("." + suffix):
                layers.setdefault(name[: -len(suffix) - 1], {})[role] = tensor
                break
        else:
            if _saved_module(name, saved) is None:
                raise LorakitError(f"{folder}: tensor {key!r} is not a LoRA weight or one of modules_to_save (a "
                                   "trained bias?); lorakit imports LoRA adapters with bias 'none'")
    incomplete = [name for name, roles in layers.items() if not {"A", "B"} <= set(roles)]
    if incomplete:
        raise LorakitError(f"{folder}: layer {incomplete[0]} lacks lora_A or lora_B; the adapter is incomplete")
    return layers


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
    count = outputs[0].shape[0]
    return Labels(None) if count == 1 else Labels(tuple(str(i) for i in range(count)))


def check_config(config: dict[str, Any], path: str | Path) -> None:
    """Refuse what a lorakit adapter cannot represent (see the module docstring)."""
    if config.get("peft_type") != "LORA":
        raise LorakitError(f"{path} is a {config.get('peft_type')} adapter; lorakit imports PEFT LoRA adapters")
    if config.get("bias", "none") != "none":
        raise LorakitError(f"{path} trains biases (bias={config['bias']!r}); lorakit adapters hold no biases")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init != "gaussian":  # pissa, olora, corda, loftq, eva: unconverted
        raise LorakitError(f"{path} was saved with init_lora_weights={init!r}, so it applies to PEFT's residual "
                           "base, not the original model; save it in PEFT with "
                           "path_initial_model_for_weight_conversion, then import that")


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` value for layer ``name``: the first key that is
    the name, or a regular expression matching its end after a dot."""
    for key, value in patterns.items():
        if name == key or re.fullmatch(rf"(.*\.)?{key}", name):
            return value
    return default


def load_peft(model: nn.Module, path: str | Path, method: str = "lora", **overrides: Any) -> Adapter:
    """Attach the PEFT LoRA adapter saved at ``path`` to ``model`` as a lorakit adapter of ``method``
    (a preset of the ``lora`` form, ``dora`` for DoRA adapters; extra options in ``overrides``)."""
    config, read = read_peft(path)
    check_config(config, path)
    layers = {name: roles for name, roles in read.items() if "saved" not in roles}
    saved = {name: roles["saved"] for name, roles in read.items() if "saved" in roles}
    if config.get("modules_to_save") and not saved:
        raise LorakitError(f"{path} lists modules_to_save {config['modules_to_save']} but holds no weights of them; "
                           "save the adapter again in PEFT")
    _check_base(model, layers, config, path)
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
        module.load_state_dict({key: value.to(device) for key, value in params.items()})
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
            raise LorakitError(f"{path} adapts {name}, which this model has no linear layer of; the adapter was made "
                               f"for another base model ({config.get('base_model_name_or_path')})")
        shape = (module.weight.shape[1], module.weight.shape[0]) if isinstance(module, Conv1D) \
            else (module.out_features, module.in_features)  # (a 4-bit weight is stored packed)
        if shape != expected:
            raise LorakitError(f"{path} adapts {name} as {expected[0]}×{expected[1]}, but this model's layer is "
                               f"{shape[0]}×{shape[1]}; the adapter was made for another "
                               f"base model ({config.get('base_model_name_or_path')})")
    recorded = config.get("base_model_name_or_path")
    own = getattr(getattr(model, "config", None), "_name_or_path", None)
    own = hub_id(own)  # what export records
    if recorded and own and Path(str(recorded)).name != Path(str(own)).name:
        warnings.warn(f"{path} was made for {recorded}, this model is {own}; the shapes fit, so it is loaded",
                      stacklevel=2)
