"""Training: a run with named phases, its data order, its log and its checkpoints."""

from .loop import StepInfo, train

__all__ = ["StepInfo", "train"]
