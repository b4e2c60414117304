"""Text-overlap scores of predictions against references, and the names of every eval metric.

BLEU is sacrebleu's corpus BLEU (tokenizer ``13a``, 0–100): n-gram matches (n = 1..4, each
clipped by its count in the reference) are pooled over the whole corpus before the precisions
``p_n`` are taken, and ``BLEU = 100 · BP · exp(Σ_n ¼ log p_n)`` with the brevity penalty
``BP = min(1, exp(1 − ref_len / hyp_len))`` (0 for an empty corpus of predictions).
ROUGE-1/2/L are F1 scores (0–1, Porter-stemmed), ``F1 = 2PR / (P + R)``, averaged over pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import LorakitError, unknown

GENERATION_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
TEACHER_FORCED_METRICS = ("tf_bleu", "tf_rouge1", "tf_rouge2", "tf_rougeL")
LOSS_METRICS = ("eval_loss", "eval_ppl")
CLASSIFICATION_METRICS = ("accuracy", "f1", "f1_macro", "mcc")  # see lorakit.evaluate.classification
REGRESSION_METRICS = ("pearson", "spearman")
METRICS = LOSS_METRICS + GENERATION_METRICS + TEACHER_FORCED_METRICS + CLASSIFICATION_METRICS + REGRESSION_METRICS
LOWER_IS_BETTER = {"eval_loss", "eval_ppl", "eval_dpo_loss"}
HELD_OUT = "held_out"  # data.held_out_path's metrics are named held_out_<metric>; its outputs go to held_out/
# the metrics each task.type can report, and those it reports unless eval.metrics says otherwise
TASK_METRICS = {
    "causal_lm": LOSS_METRICS + GENERATION_METRICS + TEACHER_FORCED_METRICS,
    "classification": ("eval_loss", *CLASSIFICATION_METRICS),
    "regression": ("eval_loss", *REGRESSION_METRICS),
}
DEFAULT_TASK_METRICS = {
    "causal_lm": ("eval_loss", "eval_ppl", "bleu", "rouge1", "rouge2", "rougeL"),
    "classification": ("eval_loss", "accuracy", "f1_macro", "mcc"),
    "regression": ("eval_loss", "pearson", "spearman"),
}

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def unprefixed(metric: str) -> str:
    """The metric a held-out score measures (``held_out_eval_loss`` is an ``eval_loss``)."""
    return metric.removeprefix(f"{HELD_OUT}_")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (held out or not) is the better one."""
    return unprefixed(metric) in LOWER_IS_BETTER


def check_metrics(names: Iterable[str], task: str = "causal_lm") -> None:
    """Raise ``LorakitError`` for an empty list or the first name that ``task`` does not report."""
    names, allowed = list(names), TASK_METRICS[task]
    if not names:
        raise LorakitError(f"eval.metrics is empty; list at least one of: {', '.join(allowed)}")
    for name in names:
        if name in METRICS and name not in allowed:
            raise LorakitError(f"metric {name!r} is not one of task {task}'s: {', '.join(allowed)}; fix eval.metrics")
        if name not in METRICS:
            raise unknown("metric", name, allowed)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise LorakitError(f"{len(predictions)} predictions but {len(references)} references; "
                           f"pass one prediction per reference")
    if not predictions:
        raise LorakitError("no predictions to score; pass at least one prediction and reference")


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0–100) of ``predictions`` against one reference each."""
    from sacrebleu.metrics import BLEU  # imported here: the scorers are only needed at eval time

    _check_pairs(predictions, references)
    return float(BLEU(tokenize="13a").corpus_score(list(predictions), [list(references)]).score)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (0–1) over the prediction/reference pairs."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(predictions, references)
    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        # rouge_score takes (target, prediction): the reference goes first
        scores = scorer.score(reference, prediction)
        for key in ROUGE_TYPES:
            totals[key] += float(scores[key].fmeasure)
    return {key: total / len(predictions) for key, total in totals.items()}


def text_scores(predictions: list[str], references: list[str], prefix: str = "") -> dict[str, float]:
    """``{prefix}bleu`` and ``{prefix}rouge1/2/L`` for the pairs."""
    scores = {"bleu": bleu(predictions, references), **rouge(predictions, references)}
    return {prefix + key: value for key, value in scores.items()}
