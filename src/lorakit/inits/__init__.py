"""Initialisations of a low-rank pair: how ``B`` and ``A`` start.

Each init declares ``factors(weight, rank, scale, generator, values, data) -> (B, A)`` over the base
weight in float32, and ``rewrites_base``: a spectral init moves ``s·B₀A₀`` out of ``W``
(``W ← W − s·B₀A₀``) so that the adapted output is unchanged at attach time.
"""

from ..registry import import_components
from .base import INITS, Init

import_components(__name__, __path__)  # every module registers itself

__all__ = ["INITS", "Init"]
