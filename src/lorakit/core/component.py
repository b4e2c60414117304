"""What every component (form, init, optimizer recipe, rank schedule) declares about itself.

A component class declares its ``options`` (``core.options.Option``), the form ``capabilities``
it ``requires`` (with ``needs``, the reason, for the error message), reasons for options it
``refuses`` although another component of its kind takes them, a one-line ``summary``, and its
own rules in ``validate``. ``lorakit.presets.validate`` asks each component of a method in turn,
so the rules live with the component they belong to.

Form capabilities (declared by each form in ``capabilities``):

- ``factors``: a per-layer low-rank pair set by an init (``set_factors``);
- ``pair``: that pair is the trainable ``B A`` kept at its rank (what LoRA-FA and Delta-LoRA act on);
- ``additive``: ``y = W x + ΔW x`` (DoRA rescales instead);
- ``gated``: takes a schedule's trainable scalar gate ``ω`` (``set_gate``/``fold_gate``);
- ``resizable``: can grow, shrink or be removed by a schedule (``resize``);
- ``masked``: AdaLoRA's triplets under a mask (``mask``, ``kept_rank``);
- ``magnitude``: a per-row magnitude vector (DoRA's ``m``), exported as PEFT's ``lora_magnitude_vector``;
- ``rank_within_shape``: the rank may not exceed ``min(out, in)``;
- ``shared_input``: the input side is a plain ``A x`` (``input_side``, before any diagonal), which
  ``forward`` also takes computed elsewhere (``inner=``): layers reading one input share one matmul
  (``lorakit.fused``).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from .options import Option
from .spec import MethodSpec

FACTORS, PAIR, ADDITIVE, GATED, RESIZABLE, MASKED, MAGNITUDE, RANK_WITHIN_SHAPE, SHARED_INPUT = (
    "factors", "pair", "additive", "gated", "resizable", "masked", "magnitude", "rank_within_shape", "shared_input")


class Component:
    """Declarations shared by the four kinds of component (class attributes; no instance state)."""

    kind: ClassVar[str] = "component"
    options: ClassVar[tuple[Option, ...]] = ()
    requires: ClassVar[frozenset[str]] = frozenset()  # form capabilities this component needs
    needs: ClassVar[str] = ""  # why, for the error: "<kind> '<name>' <needs>; form X is not supported"
    refuses: ClassVar[dict[str, str]] = {}  # option → why it has no effect here (a sharper error)
    summary: ClassVar[str] = ""
    # the component changes tensors around optimizer steps (recipes' and schedules' before_step /
    # after_step): an optimizer that steps copies of the parameters (DeepSpeed ZeRO) would bypass it
    acts_at_steps: ClassVar[bool] = False

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        """Refuse what this component cannot do in ``spec`` (nothing by default)."""


class Parts(NamedTuple):
    """The component classes of a method, by kind."""

    form: Any
    init: Any
    optimizer: Any
    schedule: Any
