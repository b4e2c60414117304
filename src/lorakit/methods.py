"""Named methods: presets over the four components (form × init × optimizer recipe × schedule).

Every field of a preset can be overridden, e.g. ``attach(model, "lora", init="olora",
optimizer="lora_plus")`` is OLoRA+. ``validate`` is the one place where combinations that make
no sense are rejected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import LorakitError, did_you_mean, unknown
from .forms import FORMS
from .inits import INITS
from .optim import RECIPES
from .schedules import SCHEDULES
from .schedules.adalora import phases as adalora_phases
from .schedules.weight_lora import selection_phase

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LR_RATIO_MODES = ("b_only", "symmetric")
DEFAULT_LR_RATIO_MODE = LR_RATIO_MODES[0]


@dataclass(frozen=True)
class MethodSpec:
    """A fully resolved method: the four components and their hyperparameters."""

    name: str = "lora"
    form: str = "lora"
    init: str = "kaiming"
    optimizer: str = "adamw"
    schedule: str = "fixed"
    rank: int = 8
    alpha: float = 16.0
    targets: str | tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0
    rslora: bool = False
    lr_ratio: float | None = None
    lr_ratio_mode: str = DEFAULT_LR_RATIO_MODE
    pissa_niter: int | None = None
    vera_d_initial: float | None = None
    lora_fa_projected: bool = False
    delta_ratio: float | None = None
    delta_start_step: int | None = None
    gate_lr: float | None = None
    weight_lora_k: int | None = None
    selection_steps: int | None = None
    selection_warmup: int | None = None
    simplex_every: int | None = None
    simplex_reallocations: int | None = None
    adalora_target_rank: int | None = None
    adalora_t_init: int | None = None
    adalora_t_final: int | None = None
    adalora_delta_t: int | None = None
    adalora_total_steps: int | None = None
    adalora_orth_reg: float | None = None
    drop_warmup_steps: int | None = None
    drop_threshold: float | None = None
    drop_top_n: int | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        return out

    def components(self) -> str:
        return f"{self.form} × {self.init} × {self.optimizer} × {self.schedule}"


# LoRA+ presets leave ``lr_ratio`` unset: the recipe's default λ = 16 applies.
PRESETS: dict[str, dict[str, Any]] = {
    "lora": {},
    "lora_plus": {"optimizer": "lora_plus"},
    "olora": {"init": "olora"},
    "olora_plus": {"init": "olora", "optimizer": "lora_plus"},
    "pissa": {"init": "pissa"},
    "dora": {"form": "dora"},
    "vera": {"form": "vera", "rank": 256},
    "lora_fa": {"optimizer": "lora_fa"},
    "delta_lora": {"optimizer": "delta_lora"},
    "weight_lora": {"schedule": "weight_lora"},
    "weight_lora_plus": {"schedule": "weight_lora_plus"},
    "simplex_lora": {"schedule": "simplex_lora"},
    "adalora": {"form": "svd", "init": "gaussian", "schedule": "adalora"},
    "lora_drop": {"schedule": "lora_drop"},
}

OVERRIDABLE = tuple(f.name for f in fields(MethodSpec) if f.name != "name")


def method_names() -> list[str]:
    """Names of all registered presets."""
    return list(PRESETS)


def resolve(method: str | MethodSpec, **overrides: Any) -> MethodSpec:
    """The preset ``method`` with ``overrides`` applied, validated."""
    if isinstance(method, MethodSpec):
        base = method
    else:
        if method not in PRESETS:
            raise unknown("method", method, PRESETS)
        base = MethodSpec(name=method, **PRESETS[method])
    for key in overrides:
        if key not in OVERRIDABLE:
            raise LorakitError(
                f"unknown method option {key!r}{did_you_mean(key, OVERRIDABLE)}; "
                f"options are: {', '.join(OVERRIDABLE)}"
            )
    overrides = {key: _plain(value) for key, value in overrides.items()}
    if "targets" in overrides:
        overrides["targets"] = _targets(overrides["targets"])
    spec = dataclasses.replace(base, **overrides)
    validate(spec)
    return spec


def _plain(value: Any) -> Any:
    """A numpy (or torch) scalar as the Python number it holds; anything else unchanged."""
    if type(value).__module__ in ("numpy", "torch") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _targets(value: Any) -> str | tuple[str, ...]:
    """``targets`` as stored: a string as given, any other collection of names as a tuple."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(sorted(value)) if isinstance(value, (set, frozenset)) else tuple(value)
    raise LorakitError(f"targets must be a list of module-name suffixes, a regex or 'all-linear', got {value!r}")


def validate(spec: MethodSpec) -> None:
    """Reject unknown components, out-of-range values and combinations that make no sense."""
    FORMS.get(spec.form)
    INITS.get(spec.init)
    RECIPES.get(spec.optimizer)
    SCHEDULES.get(spec.schedule)
    _check_values(spec)
    if not _is_real(spec.alpha) or not 0 < spec.alpha < math.inf:
        raise LorakitError(f"alpha must be a finite number > 0, got {spec.alpha!r}")
    if not _is_real(spec.dropout) or not 0.0 <= spec.dropout < 1.0:
        raise LorakitError(f"dropout must be a number in [0, 1), got {spec.dropout!r}")
    if spec.lr_ratio_mode not in LR_RATIO_MODES:
        raise unknown("lr_ratio_mode", str(spec.lr_ratio_mode), LR_RATIO_MODES)
    if spec.lr_ratio_mode != "b_only" and spec.optimizer != "lora_plus":
        raise LorakitError(f"lr_ratio_mode={spec.lr_ratio_mode!r} has no effect with optimizer "
                           f"{spec.optimizer!r}; set optimizer='lora_plus' or drop lr_ratio_mode")
    if spec.lr_ratio is not None:
        if not _is_real(spec.lr_ratio) or not 0 < spec.lr_ratio < math.inf:
            raise LorakitError(
                f"lr_ratio (LoRA+ λ) must be a finite number > 0, got {spec.lr_ratio!r}; "
                "use λ<1 to let A learn faster"
            )
        if spec.optimizer != "lora_plus":
            raise LorakitError(
                f"lr_ratio={spec.lr_ratio} has no effect with optimizer {spec.optimizer!r}; "
                "set optimizer='lora_plus' or drop lr_ratio"
            )
    if spec.pissa_niter is not None and spec.init != "pissa":
        raise LorakitError("pissa_niter needs init='pissa' (omit it for the exact SVD)")
    _validate_combination(spec)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _needs(spec: MethodSpec, option: str, component: str, value: str) -> None:
    if getattr(spec, component) != value:
        raise LorakitError(f"{option} has no effect with {component} {getattr(spec, component)!r}; "
                           f"set {component}={value!r} or drop {option}")


SCHEDULE_OPTIONS = {
    "gate_lr": ("weight_lora", "weight_lora_plus", "simplex_lora"),
    "weight_lora_k": ("weight_lora", "weight_lora_plus"),
    "selection_steps": ("weight_lora", "weight_lora_plus"),
    "selection_warmup": ("weight_lora", "weight_lora_plus"),
    "simplex_every": ("simplex_lora",),
    "simplex_reallocations": ("simplex_lora",),
    "adalora_target_rank": ("adalora",),
    "adalora_t_init": ("adalora",),
    "adalora_t_final": ("adalora",),
    "adalora_delta_t": ("adalora",),
    "adalora_total_steps": ("adalora",),
    "adalora_orth_reg": ("adalora",),
    "drop_warmup_steps": ("lora_drop",),
    "drop_threshold": ("lora_drop",),
    "drop_top_n": ("lora_drop",),
}
# numeric options beyond alpha/dropout/lr_ratio (checked with their own messages): (real number?, non-negative? else positive)
NUMBER_OPTIONS = {
    "rank": (False, False), "pissa_niter": (False, True), "vera_d_initial": (True, False), "delta_ratio": (True, False),
    "delta_start_step": (False, True), "gate_lr": (True, False), "weight_lora_k": (False, False),
    "selection_steps": (False, False), "selection_warmup": (False, True), "simplex_every": (False, False),
    "simplex_reallocations": (False, False), "adalora_target_rank": (False, False),
    "adalora_t_init": (False, True), "adalora_t_final": (False, True), "adalora_delta_t": (False, False),
    "adalora_total_steps": (False, False), "adalora_orth_reg": (True, True), "drop_warmup_steps": (False, False),
    "drop_threshold": (True, False), "drop_top_n": (False, False), "seed": (False, True),
}
OPTION_LABELS = {"delta_ratio": "delta_ratio (Delta-LoRA λ)"}
FLAG_OPTIONS = ("rslora", "lora_fa_projected")


def _check_values(spec: MethodSpec) -> None:
    """Every numeric option set is a finite number (an integer where counted) in its range, every
    flag a bool."""
    for option, (real, non_negative) in NUMBER_OPTIONS.items():
        value = getattr(spec, option)
        if value is None:
            continue
        kind = (int, float) if real else int
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
                or not (value >= 0 if non_negative else value > 0):
            raise LorakitError(f"{OPTION_LABELS.get(option, option)} must be a "
                               f"{'non-negative' if non_negative else 'positive'} "
                               f"{'finite number' if real else 'integer'}, got {value!r}")
    for option in FLAG_OPTIONS:
        if not isinstance(getattr(spec, option), bool):
            raise LorakitError(f"{option} must be true or false, got {getattr(spec, option)!r}")


def _validate_schedule(spec: MethodSpec) -> None:
    for option, schedules in SCHEDULE_OPTIONS.items():
        if getattr(spec, option) is not None and spec.schedule not in schedules:
            raise LorakitError(f"{option} has no effect with schedule {spec.schedule!r}; "
                               f"it belongs to {', '.join(schedules)}")
    if spec.drop_threshold is not None and spec.drop_top_n is not None:
        raise LorakitError("drop_threshold and drop_top_n are two ways to choose the kept layers; set one of them")
    if spec.schedule in ("weight_lora", "weight_lora_plus") and spec.selection_warmup is not None:
        selection, warmup = selection_phase(spec)
        if warmup >= selection:
            raise LorakitError(f"selection_warmup ({warmup}) must be smaller than selection_steps ({selection})")
    if spec.drop_threshold is not None and spec.drop_threshold > 1:
        raise LorakitError(f"drop_threshold is a share of the total importance in (0, 1], got {spec.drop_threshold!r}")
    if spec.schedule == "lora_drop" and spec.init != "kaiming":
        raise LorakitError(f"lora_drop replaces the dropped layers' adapters by shared fresh ones; init "
                           f"{spec.init!r} rewrites the base weights and cannot be dropped that way (use init='kaiming')")
    if spec.schedule == "adalora":
        _validate_adalora(spec)
    elif spec.schedule != "fixed":
        if spec.form != "lora":
            raise LorakitError(f"schedule {spec.schedule!r} resizes low-rank pairs; form {spec.form!r} is not "
                               "supported (use form='lora')")
        _refuse_fixed_pair(spec, f"schedule {spec.schedule!r}, which resizes, removes or shares adapters")


def _validate_adalora(spec: MethodSpec) -> None:
    if spec.form != "svd":
        raise LorakitError(f"schedule 'adalora' masks the triplets of AdaLoRA's SVD form; form {spec.form!r} is "
                           "not supported (use form='svd')")
    if spec.adalora_target_rank is not None and spec.adalora_target_rank > spec.rank:
        raise LorakitError(f"adalora_target_rank ({spec.adalora_target_rank}) must be <= rank ({spec.rank})")
    steps = spec.adalora_total_steps
    t_init, t_final = adalora_phases(spec)
    if steps is not None and t_init + t_final >= steps:
        raise LorakitError(f"adalora_t_init + adalora_t_final must be < adalora_total_steps ({steps}), got "
                           f"{t_init} + {t_final} (defaults: ⌊T/10⌋ and ⌊T/5⌋)")


def _refuse_fixed_pair(spec: MethodSpec, what: str) -> None:
    """Refuse ``what`` (a form or schedule that breaks per-layer pairs) for recipes that need them."""
    reason = RECIPES.get(spec.optimizer).fixed_pair
    if reason is not None:
        raise LorakitError(f"optimizer {spec.optimizer!r} cannot be combined with {what}: {spec.optimizer} {reason}; "
                           "use optimizer 'adamw' or 'lora_plus'")


def _validate_combination(spec: MethodSpec) -> None:
    """Method-specific options and the combinations of components that make no sense."""
    if spec.form == "vera":
        if spec.init != "kaiming":
            raise LorakitError(f"VeRA uses shared random projections; init {spec.init!r} does not apply "
                               "(use init='kaiming')")
        _refuse_fixed_pair(spec, "form 'vera', which has no trainable pair B A")
        if spec.rslora:
            raise LorakitError("VeRA has no α/r scale for rslora to change; drop rslora")
    if spec.form == "svd":
        if spec.init != "gaussian":
            raise LorakitError(f"AdaLoRA's SVD form starts from λ = 0 with Gaussian P, Q; init {spec.init!r} does "
                               "not apply (use init='gaussian')")
        if spec.schedule not in ("adalora", "fixed"):
            raise LorakitError(f"form 'svd' is pruned by its mask, not resized; schedule {spec.schedule!r} is not "
                               "supported (use schedule='adalora' or 'fixed')")
        _refuse_fixed_pair(spec, "form 'svd', which trains P, λ and Q under a mask")
    if spec.init == "gaussian" and spec.form != "svd":
        raise LorakitError(f"init 'gaussian' draws both factors at random, which would change the outputs of form "
                           f"{spec.form!r} at attach; it belongs to form 'svd' (use init='kaiming')")
    if spec.vera_d_initial is not None:
        _needs(spec, "vera_d_initial", "form", "vera")
    if spec.lora_fa_projected:
        _needs(spec, "lora_fa_projected", "optimizer", "lora_fa")
    if spec.delta_ratio is not None or spec.delta_start_step is not None:
        _needs(spec, "delta_ratio/delta_start_step", "optimizer", "delta_lora")
    _validate_schedule(spec)
    if spec.optimizer == "delta_lora":
        if spec.dropout != 0:
            raise LorakitError(f"Delta-LoRA needs adapter dropout 0 (got {spec.dropout}); set dropout=0")
        if spec.form != "lora":
            raise LorakitError(f"Delta-LoRA updates W from the change of B A; form {spec.form!r} is not "
                               "supported (use form='lora')")
