"""Evaluation: loss and perplexity on response tokens, BLEU/ROUGE of generated and teacher-forced
responses, and the scores of classifiers (``classification``)."""

from .generation import generate, generation_scores
from .loss import evaluate_loss, token_loss
from .metrics import (
                      CLASSIFICATION_METRICS,
                      GENERATION_METRICS,
                      LOSS_METRICS,
                      LOWER_IS_BETTER,
                      METRICS,
                      REGRESSION_METRICS,
                      TEACHER_FORCED_METRICS,
                      bleu,
                      check_metrics,
                      rouge,
                      text_scores,
)
from .teacher_forced import teacher_forced_scores, teacher_forced_texts

__all__ = [
    "CLASSIFICATION_METRICS", "GENERATION_METRICS", "LOSS_METRICS", "LOWER_IS_BETTER", "METRICS",
    "REGRESSION_METRICS", "TEACHER_FORCED_METRICS", "bleu", "check_metrics", "evaluate_loss", "generate",
    "generation_scores", "rouge", "teacher_forced_scores", "teacher_forced_texts", "text_scores", "token_loss",
]
