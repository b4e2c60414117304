"""liger-kernel's fused Triton kernels on the frozen model (``train.kernels: liger``, CUDA only).

Applied to the model instance: RMSNorm, RoPE and the SwiGLU (GeGLU for Gemma) MLP, whose forward
becomes ``down(act(gate x) ⊙ up x)`` with one fused elementwise kernel; its ``gate``/``up``/``down``
stay the model's own modules, so lorakit's adapted layers inside keep working. Besides the
instance, liger replaces module-level names in transformers' modelling file of the family — the
rotary function, the RMSNorm and MLP classes — so every model of that family built or run later in
the process uses them too. Its cross-entropy kernels are not used: lorakit computes the loss itself,
with the logits at the loss positions only (``train.sparse_logits``). The kernels round
differently from PyTorch's (bf16), so the loss matches the plain path to that rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LorakitError

LIGER_PATCHES = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


def apply_liger(model: nn.Module) -> None:
    """Swap ``model``'s RMSNorm, RoPE and SwiGLU for liger's kernels (model families liger knows)."""
    if not torch.cuda.is_available():
        raise LorakitError("train.kernels liger runs Triton kernels on CUDA GPUs; this machine has none (set "
                           "train.kernels: none)")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise LorakitError(f"liger-kernel has no kernels for model type {model_type!r}; set train.kernels: none")
    _apply_liger_kernel_to_instance(model=model, **LIGER_PATCHES)
