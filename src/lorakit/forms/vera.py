"""VeRA: vector-based random matrix adaptation (Kopiczko et al. 2023, arXiv 2310.11454).

One pair of frozen random projections is shared by all adapted layers of a model,
``A_sh (r, in_max)`` and ``B_sh (out_max, r)``, He-uniform (bound ``√(6/fan_in)``) drawn in that
order from a generator seeded with the method's ``seed``;
each layer uses the slices ``A_sh[:, :in]`` and ``B_sh[:out, :]``. Per layer only two vectors
train, ``d ∈ R^r`` (starts at ``vera_d_initial``, default 0.1) and ``b ∈ R^out`` (starts at 0):
``y = W x + b_base + b ⊙ (B_sh (d ⊙ (A_sh dropout(x))))``. No ``α/r`` scale (as in the paper).

The projections are regenerated from the stored seed on load, never saved; they are drawn on
the CPU so that every device gets the same ones. Each layer holds views of the shared tensors
(non-persistent buffers). Roles for optimizer recipes: ``d`` is ``A`` (input side), ``b`` is
``B``. Only the ``kaiming`` init applies (``VeRA.validate``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.component import ADDITIVE, Parts
from ..core.options import Option
from ..core.spec import MethodSpec
from ..errors import LorakitError
from .base import DROPOUT, FORMS, RANK, Form
from .lora import compute_dtype

D_INITIAL = Option("vera_d_initial", float, 0.1, "initial value of every entry of VeRA's vector d",
                   minimum=0.0, open_minimum=True)


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """He (Kaiming) uniform for ReLU gain: ``U(−√(6/fan_in), √(6/fan_in))``, ``fan_in = shape[1]``."""
    bound = math.sqrt(6.0 / shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def shared_projections(rank: int, in_max: int, out_max: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_sh (r, in_max), B_sh (out_max, r))`` from ``seed``, float32 on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    A_shared = kaiming_uniform((rank, in_max), generator)
    B_shared = kaiming_uniform((out_max, rank), generator)
    return A_shared, B_shared


@FORMS.register("vera")
class VeRA(Form):
    """Trainable scaling vectors ``d`` and ``b`` around frozen shared projections."""

    capabilities: ClassVar[frozenset[str]] = frozenset({ADDITIVE})
    options: ClassVar[tuple[Option, ...]] = (RANK, DROPOUT, D_INITIAL)
    refuses: ClassVar[dict[str, str]] = {
        "rslora": "VeRA has no α/r scale for rslora to change; drop rslora",
        "alpha": "VeRA has no α/r scale (its vectors d and b set the size of ΔW); drop alpha",
    }
    summary: ClassVar[str] = "frozen shared random projections; trains the vectors d and b"

    def __init__(self, A_shared: torch.Tensor, B_shared: torch.Tensor, in_features: int, out_features: int,
                 d_initial: float = D_INITIAL.default, dropout: float = 0.0) -> None:
        super().__init__()
        rank = A_shared.shape[0]
        self.rank = rank
        self.register_buffer("A_shared", A_shared[:, :in_features], persistent=False)
        self.register_buffer("B_shared", B_shared[:out_features, :], persistent=False)
        self.d = nn.Parameter(torch.full((rank,), float(d_initial), device=A_shared.device))
        self.b = nn.Parameter(torch.zeros(out_features, device=A_shared.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def validate(cls, spec: MethodSpec, parts: Parts) -> None:
        if spec.init != "kaiming":
            raise LorakitError(f"VeRA uses shared random projections; init {spec.init!r} does not apply "
                               "(use init='kaiming')")

    @classmethod
    def shared(cls, spec: MethodSpec, targets: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
        in_max = max(t.in_features for t in targets)
        out_max = max(t.out_features for t in targets)
        device = targets[0].weight.device
        A_shared, B_shared = shared_projections(spec.rank, in_max, out_max, spec.seed)
        return A_shared.to(device), B_shared.to(device)

    @classmethod
    def build(cls, in_features: int, out_features: int, spec: MethodSpec, shared: Any) -> VeRA:
        return cls(*shared, in_features, out_features, d_initial=spec.vera_d_initial, dropout=spec.dropout)

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        y = base(x)
        h = self.dropout(x)
        dtype = compute_dtype(h, self.d)
        h = F.linear(h.to(dtype), self.A_shared.to(dtype)) * self.d.to(dtype)
        return y + (F.linear(h, self.B_shared.to(dtype)) * self.b.to(dtype)).to(y.dtype)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(diag(b) B_sh diag(d), A_sh)``: a rank-``r`` LoRA pair with the same ``ΔW``."""
        return self.b.unsqueeze(1) * self.B_shared * self.d, self.A_shared

    def roles(self) -> dict[str, nn.Parameter]:
        return {"A": self.d, "B": self.b}
