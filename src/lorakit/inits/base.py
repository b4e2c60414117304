"""The interface of an initialisation, and its registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ..core.component import FACTORS, Component
from ..core.options import Option
from ..errors import LorakitError
from ..registry import Registry
from .calibration import WEIGHTS


class Init(Component):
    """How a layer's pair starts: ``factors(weight_f32, rank, scale, generator, values, data) ->
    (B (out, r), A (r, in))``, ``values`` the method's option values.

    ``rewrites_base``: the init takes ``s·B₀A₀`` out of the base weight, so the initial factors
    must be kept to rebuild the adapted model from the original base.

    ``reads``: what the init learns from data before step 0 (``""``: nothing; ``"inputs"``,
    ``"scaled_inputs"``, ``"gradients"``: each target layer's statistics of that kind,
    ``lorakit.inits.calibration``). A data-aware init receives
    its layer's statistics as ``data`` and may set each layer's rank (``ranks``); the factors it
    draws are saved with the adapter, so loading never needs the data again. ``"weights"``: a
    quantized layer's full-precision weight from the checkpoint (``FullPrecision``), read no data
    and again at load.

    ``quantized_only``: the init fits the adapter to a quantized base (LoftQ) and refuses a plain one.
    """

    kind: ClassVar[str] = "init"
    rewrites_base: ClassVar[bool] = False
    reads: ClassVar[str] = ""
    quantized_only: ClassVar[bool] = False

    @classmethod
    def reads_of(cls, values: Mapping[str, Any]) -> str:
        """What this init reads with these option values (``reads``, unless an option changes it)."""
        return cls.reads

    @classmethod
    def reads_batches(cls, values: Mapping[str, Any]) -> bool:
        """Whether it reads training batches (the checkpoint's ``weights`` are no batches)."""
        return cls.reads_of(values) not in ("", WEIGHTS)

    @staticmethod
    def factors(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator,
                values: Mapping[str, Any], data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def ranks(statistics: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, int] | None:
        """Each layer's rank from its statistics (``None``: every layer at ``rank``; 0: no adapter)."""
        return None


SPECTRAL_RESIDUAL = Option(
    "spectral_residual", str, "correction", "on a quantized base: keep W and add a frozen −s·B₀A₀ path (correction: "
    "exact, disabled() is the quantized base), requantize the dequantized W − s·B₀A₀, or decompose the checkpoint's "
    "full-precision W and quantize its residual once (loftq: QPiSSA as published; best for PiSSA, docs/qlora.md)",
    choices=("correction", "requantize", "loftq"))


class SpectralInit(Init):
    """An init that moves ``s·B₀A₀`` out of ``W`` (OLoRA, PiSSA): the initial factors are kept, and
    it needs a form with a per-layer pair to set. On a quantized base the residual is requantized,
    or kept as a frozen path (``spectral_residual``, see ``lorakit.quantized``)."""

    options: ClassVar[tuple[Option, ...]] = (SPECTRAL_RESIDUAL,)
    rewrites_base: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({FACTORS})

    @classmethod
    def reads_of(cls, values: Mapping[str, Any]) -> str:
        """``weights`` for ``spectral_residual: loftq`` (the full-precision W), else ``reads``."""
        return WEIGHTS if values.get("spectral_residual") == "loftq" else cls.reads

    @classmethod
    def validate(cls, spec: Any, parts: Any) -> None:
        """Refuse ``spectral_residual: loftq`` for an init that reads data (one calibration per run)."""
        if cls.reads and spec.options().get("spectral_residual") == "loftq":
            raise LorakitError(f"init {spec.init!r} reads {cls.reads.replace('_', ' ')} before step 0, and "
                               "spectral_residual: loftq would read the checkpoint's weights too; use requantize or "
                               "correction with it")


INITS: Registry[type[Init]] = Registry("init")
