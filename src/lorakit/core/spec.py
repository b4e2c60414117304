"""``MethodSpec``: a resolved method — its four components and the effective value of every
option they declare (``lorakit.presets.resolve`` builds it; saved adapters record it whole)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

COMPONENT_KINDS = ("form", "init", "optimizer", "schedule")


@dataclass(frozen=True)
class MethodSpec:
    """The preset ``name``, the four component names and ``values``: ``(option, value)`` pairs for
    exactly the options of these components (and the adapter's ``targets`` and ``seed``).

    Options read as attributes (``spec.rank``, ``spec.lr_ratio``); an option that the method's
    components do not declare is an ``AttributeError``. Build one with ``lorakit.presets.resolve``
    (or ``attach``), which fills and checks the values.
    """

    name: str = "lora"
    form: str = "lora"
    init: str = "kaiming"
    optimizer: str = "adamw"
    schedule: str = "fixed"
    values: tuple[tuple[str, Any], ...] = ()
    # which values were derived (not given) and the run they were derived from: resolving the spec
    # again derives them again; not part of the method's identity
    derived: tuple[str, ...] = field(default=(), compare=False)
    run: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    def __getattr__(self, key: str) -> Any:
        for name, value in object.__getattribute__(self, "values"):
            if name == key:
                return value
        raise AttributeError(f"method {object.__getattribute__(self, 'name')!r} has no option {key!r}")

    def options(self) -> dict[str, Any]:
        """The option values as a dict, in declaration order."""
        return dict(self.values)

    def with_values(self, **changes: Any) -> MethodSpec:
        """The same method with some option values replaced (unchecked: resolve validates)."""
        values = {**self.options(), **changes}
        return replace(self, values=tuple(values.items()))

    def components(self) -> str:
        return f"{self.form} × {self.init} × {self.optimizer} × {self.schedule}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: name, components and every option (tuples as lists)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in self.values}
        return {"name": self.name, **{kind: getattr(self, kind) for kind in COMPONENT_KINDS}, **values}
