"""Initialisations of a low-rank pair: how ``B`` and ``A`` start.

Each init is a function ``(weight, rank, scale, generator, options) -> (B, A)`` over the base
weight in float32, registered with ``rewrites_base``: a spectral init moves ``s·B₀A₀`` out of
``W`` (``W ← W − s·B₀A₀``) so that the adapted output is unchanged at attach time.
"""

from ..registry import Registry
from .base import Init

INITS: Registry[Init] = Registry("init")

from . import gaussian, kaiming, olora, pissa  # noqa: E402,F401  (register themselves)

__all__ = ["INITS", "Init"]
