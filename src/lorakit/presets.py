"""Named methods: presets over the four components (form × init × optimizer recipe × schedule).

Every field of a preset can be overridden, e.g. ``attach(model, "lora", init="olora",
optimizer="lora_plus")`` is OLoRA+. ``resolve`` builds the ``MethodSpec``: the components, and
for each option they declare (``Component.options``, plus the adapter's ``targets`` and ``seed``)
its effective value — given, else the preset's, else the declared default, else derived from the
other options and the run. ``validate`` then asks each component for its own rules and checks the
form capabilities the components require.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from .core.component import Parts
from .core.generators import SEED
from .core.options import Option, plain
from .core.spec import COMPONENT_KINDS, MethodSpec
from .errors import LorakitError, did_you_mean, unknown
from .forms import FORMS
from .full_modules import TRAIN_MODULES
from .inits import INITS
from .optimizers import OPTIMIZERS
from .optimizers.base import LR_SCALE
from .schedules import SCHEDULES
from .targeting import TARGETS

REGISTRIES = {"form": FORMS, "init": INITS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
ADAPTER_OPTIONS = (TARGETS, SEED, TRAIN_MODULES, LR_SCALE)
DEFAULT_COMPONENTS = {"form": "lora", "init": "kaiming", "optimizer": "adamw", "schedule": "fixed"}

# One line per method: the components it changes and the values it sets (the rest are defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "lora": {},
    "lora_plus": {"optimizer": "lora_plus"},
    "olora": {"init": "olora"},
    "olora_plus": {"init": "olora", "optimizer": "lora_plus", "lr_ratio": 0.5},  # λ = 16 diverges: methods/index.md
    "pissa": {"init": "pissa"},
    "milora": {"init": "milora"},
    "eva": {"init": "eva"},  # reads init_batches batches of the training data before step 0
    "corda": {"init": "corda"},  # as EVA; corda_mode ipm (PEFT's default) or kpm
    "lora_ga": {"init": "lora_ga"},  # reads the gradient of init_batches batches before step 0
    "loftq": {"init": "loftq"},  # a quantized base only; reads the checkpoint's full-precision weights
    "dora": {"form": "dora"},
    "vera": {"form": "vera", "rank": 256, "lr_scale": 25.0},  # tuned SST-2: 26× LoRA's rate (results/study_sst2_tuned)
    "lora_fa": {"optimizer": "lora_fa"},
    "delta_lora": {"optimizer": "delta_lora"},
    "weight_lora": {"schedule": "weight_lora"},
    "weight_lora_plus": {"schedule": "weight_lora_plus"},
    "simplex_lora": {"schedule": "simplex_lora", "lr_scale": 5.0},  # tuned SST-2: 4.8× LoRA's rate
    "adalora": {"form": "svd", "init": "gaussian", "schedule": "adalora", "lr_scale": 25.0},  # tuned SST-2: 24×
    "lora_drop": {"schedule": "lora_drop"},
}


def method_names() -> list[str]:
    """Names of all registered presets."""
    return list(PRESETS)


def parts_of(spec: MethodSpec) -> Parts:
    """The component classes of ``spec`` (a one-line error for an unknown one)."""
    return Parts(*(REGISTRIES[kind].get(getattr(spec, kind)) for kind in COMPONENT_KINDS))


def refuse_if_bypassed(spec: MethodSpec, where: str) -> None:
    """Refuse ``spec`` where the optimizer steps copies of the parameters (DeepSpeed's ZeRO): its
    recipe or schedule acting around the step (``acts_at_steps``) would never see the adapter."""
    parts = parts_of(spec)
    used = ((parts.optimizer, spec.optimizer), (parts.schedule, spec.schedule))
    acting = [f"{component.kind} {name!r}" for component, name in used if component.acts_at_steps]
    if acting:
        raise LorakitError(f"{' and '.join(acting)} act(s) on the adapter around each optimizer step, which "
                           f"{where} bypasses; use FSDP or DDP for this method")


def declared_options(parts: Parts) -> list[Option]:
    """The options of a composition, in order: the adapter's, then each component's."""
    options: dict[str, Option] = {option.name: option for option in ADAPTER_OPTIONS}
    for part in parts:
        options.update({option.name: option for option in part.options if option.name not in options})
    return list(options.values())


def registered_options() -> Iterator[tuple[str, str, Option]]:
    """``(kind, component name, option)`` for every option of every registered component."""
    for kind, registry in REGISTRIES.items():
        for name in registry:
            for option in registry.get(name).options:
                yield kind, name, option


def find_option(name: str) -> Option | None:
    """The declaration of the method option ``name`` (``None`` if no component declares it)."""
    known = {option.name: option for option in ADAPTER_OPTIONS}
    known.update({option.name: option for _, _, option in registered_options() if option.name not in known})
    return known.get(name)


def option_names() -> list[str]:
    """Every method option any component declares, plus the component keys."""
    names = [*COMPONENT_KINDS, *(o.name for o in ADAPTER_OPTIONS), *(o.name for _, _, o in registered_options())]
    return list(dict.fromkeys(names))


def resolve(method: str | MethodSpec, run: Mapping[str, int] | None = None, **overrides: Any) -> MethodSpec:
    """The preset ``method`` (or an existing spec) with ``overrides`` applied, every option at its
    effective value, validated. ``run``: what derived defaults may use (``layers``, ``total_steps``)."""
    if isinstance(method, MethodSpec):  # its derived values are derived again, with the run it knew
        name = method.name
        base = {**{k: getattr(method, k) for k in COMPONENT_KINDS},
                **{k: v for k, v in method.options().items() if k not in method.derived}}
        run = {**dict(method.run), **(run or {})}
    elif method in PRESETS:
        name, base = method, {**DEFAULT_COMPONENTS, **PRESETS[method]}
    else:
        raise _unknown_method(method)
    known = option_names()
    for key in overrides:
        if key not in known:
            raise LorakitError(f"unknown method option {key!r}{did_you_mean(key, known)}; "
                               f"options are: {', '.join(k for k in known)}")
    given = {key: plain(value) for key, value in overrides.items() if plain(value) is not None or _null_refused(key)}
    components = {kind: given.pop(kind, base[kind]) for kind in COMPONENT_KINDS}
    skeleton = MethodSpec(name=name, **components)
    parts = parts_of(skeleton)
    declared = {option.name: option for option in declared_options(parts)}
    checked = {key: (declared.get(key) or find_option(key)).check(value) for key, value in given.items()}
    for key, value in list(checked.items()):
        if key not in declared:
            if not _always_set(key, value):
                raise _no_effect(key, value, skeleton, parts)
            del checked[key]
    inherited = {k: v for k, v in base.items() if k in declared}  # a preset's or an earlier spec's values
    spec = _with_values(skeleton, declared.values(), {**inherited, **checked}, run or {})
    validate(spec, parts)
    return spec


# names users write for what is not a preset of its own
NOT_PRESETS = {"qlora": "QLoRA is a method on a quantized base: model.quantize: nf4 (any preset, e.g. lora)",
               "rslora": "rsLoRA is LoRA with method.rslora: true"}


def _unknown_method(name: str) -> LorakitError:
    """The error for a method name that is no preset: a display name (``OLoRA+``, ``LoRA-GA``) is
    pointed to its preset, ``qlora`` and ``rslora`` to the settings that give them."""
    if not isinstance(name, str):
        return unknown("method", name, PRESETS)
    spelled = name.strip().lower().replace("+", "_plus").replace("-", "_").replace(" ", "_")
    if spelled in NOT_PRESETS:
        return LorakitError(f"unknown method {name!r}: {NOT_PRESETS[spelled]}")
    if spelled in PRESETS:
        return LorakitError(f"unknown method {name!r} (did you mean {spelled!r}?); presets are lower-case, "
                            "'+' written _plus and '-' written _")
    return unknown("method", name, PRESETS)


def _always_set(key: str, value: Any) -> bool:
    """Whether ``value`` is the default of an option that always has a value (``rank``, ``alpha``,
    ``rslora``, ``lr_ratio_mode``, …): it changes nothing, so a method without the option takes it
    silently (a compare's shared ``alpha: 16`` may hold VeRA runs). The options that only their
    method's users set (``lr_ratio``, ``delta_ratio``, the schedules' options; null means their
    default) are refused whenever they are given to another method."""
    option = find_option(key)
    return not option.null_is_default and value == option.default


def _null_refused(key: str) -> bool:
    """Whether a given ``None`` for ``key`` is checked (and refused) rather than meaning the default."""
    option = find_option(key)
    return key in COMPONENT_KINDS or (option is not None and not option.null_is_default)


def complete(spec: MethodSpec, **run: int) -> MethodSpec:
    """``spec`` with the defaults that depend on the run derived (``layers``: the number of
    adapted layers; ``total_steps``: the run's optimizer steps), validated again."""
    return resolve(spec, run=run)


def complete_for_run(spec: MethodSpec, total_steps: int) -> MethodSpec:
    """``spec`` for a run of ``total_steps`` optimizer steps: a run too short for its schedule is
    refused, and the defaults derived from the step count (AdaLoRA's ``T``) are filled in."""
    parts_of(spec).schedule.check_run(spec, total_steps)
    return complete(spec, total_steps=total_steps)


def from_saved(method: Mapping[str, Any], format_version: int) -> MethodSpec:
    """The spec a saved adapter records. Format 2 holds every option's effective value, used as
    saved; format 1 left unset options null (and listed every component's options): those take
    the defaults."""
    components = {kind: method[kind] for kind in COMPONENT_KINDS}
    skeleton = MethodSpec(name=method["name"], **components)
    parts = parts_of(skeleton)
    declared = declared_options(parts)
    values = {k: v for k, v in method.items() if k not in ("name", *COMPONENT_KINDS)}
    if format_version == 1:
        names = {option.name for option in declared}
        values = {k: v for k, v in values.items() if k in names and v is not None}
    unknown_saved = sorted(set(values) - {option.name for option in declared})
    if unknown_saved:
        raise LorakitError(f"the saved method has option {unknown_saved[0]!r}, which {skeleton.components()} does "
                           "not declare in this lorakit version; load it with the version that saved it")
    by_name = {option.name: option for option in declared}
    spec = _with_values(skeleton, declared, {k: by_name[k].check(v) for k, v in values.items()}, {})
    validate(spec, parts)
    return spec


def _with_values(skeleton: MethodSpec, declared: Any, given: Mapping[str, Any], run: Mapping[str, int]) -> MethodSpec:
    """``skeleton`` with every declared option's value: given, else its default, else derived
    (the spec remembers which values were derived, and from what run)."""
    values: dict[str, Any] = {}
    derived = []
    for option in declared:
        value = given.get(option.name)
        if value is None:
            value = option.default
        if value is None and option.derive is not None:
            value = option.derive(values, run)
            derived.append(option.name)
        values[option.name] = value
    return dataclasses.replace(skeleton.with_values(**values), derived=tuple(derived), run=tuple(sorted(run.items())))


def _no_effect(key: str, value: Any, spec: MethodSpec, parts: Parts) -> LorakitError:
    """The error for an option that none of ``spec``'s components takes."""
    for part in parts:
        if key in part.refuses:
            return LorakitError(part.refuses[key])
    owners = [(kind, name) for kind, name, option in registered_options() if option.name == key]
    kind = owners[0][0]
    if kind == "schedule":  # shared by several schedules (gate_lr): name them all
        return LorakitError(f"{key} has no effect with schedule {spec.schedule!r}; it belongs to "
                            f"{', '.join(name for _, name in owners)}")
    return LorakitError(f"{key}={value!r} has no effect with {kind} {getattr(spec, kind)!r}; "
                        f"set {kind}={owners[0][1]!r} or drop {key}")


def validate(spec: MethodSpec, parts: Parts | None = None) -> None:
    """Ask each component for its own rules, then check the form capabilities they require."""
    parts = parts or parts_of(spec)
    for part in parts:
        part.validate(spec, parts)
    for kind, part in zip(COMPONENT_KINDS, parts):
        missing = part.requires - parts.form.capabilities
        if missing:
            able = [name for name in FORMS if part.requires <= FORMS.get(name).capabilities]
            raise LorakitError(f"{kind} {getattr(spec, kind)!r} {part.needs}; form {spec.form!r} is not supported"
                               + (f" (use form={able[0]!r})" if able else ""))
