"""Training: the accelerate loop, its data order and its checkpoints."""

from .loop import train

__all__ = ["train"]
