"""Evaluation: loss and perplexity on response tokens."""

from .loss import evaluate_loss, token_loss

__all__ = ["evaluate_loss", "token_loss"]
