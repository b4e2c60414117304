"""lorakit.evaluate: BLEU/ROUGE, metric names, teacher-forced scores and batched generation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import ADDITION
from lorakit.data import IGNORE_INDEX, Collator, encode_all
from lorakit.data.encode import encode, encode_prompt
from lorakit.errors import LorakitError
from lorakit.evaluate import (
    CLASSIFICATION_METRICS,
    GENERATION_METRICS,
    LOSS_METRICS,
    LOWER_IS_BETTER,
    METRICS,
    REGRESSION_METRICS,
    TEACHER_FORCED_METRICS,
    bleu,
    check_metrics,
    generate,
    generation_scores,
    rouge,
    teacher_forced_scores,
    teacher_forced_texts,
    text_scores,
)

CAT = "the cat sat on the mat"


# -- BLEU / ROUGE ---------------------------------------------------------------------------
def test_exact_match_is_perfect():
    scores = text_scores([CAT, "one plus two is three"], [CAT, "one plus two is three"])
    assert scores == pytest.approx({"bleu": 100.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def test_disjoint_pair_scores_zero():
    scores = text_scores(["dogs bark loudly today"], [CAT])
    assert scores == pytest.approx({"bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


def test_empty_prediction_scores_zero():
    assert text_scores([""], [CAT]) == pytest.approx(
        {"bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})
    # next to a perfect pair, the empty one scores 0 in the ROUGE mean...
    scores = rouge([CAT, ""], [CAT, "a b c d"])
    assert scores == pytest.approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})
    # ...and in corpus BLEU it adds no n-grams (precisions stay 1) but 4 reference words:
    # hyp_len 6, ref_len 10, BP = exp(1 - 10/6)
    assert bleu([CAT, ""], [CAT, "a b c d"]) == pytest.approx(100 * math.exp(1 - 10 / 6), abs=1e-2)


def test_rouge_partial_by_hand():
    # unigrams: all 3 predicted are in the 6-word reference: P = 1, R = 3/6, F1 = 2/3
    # bigrams: "the cat", "cat sat" are among the reference's 5: P = 1, R = 2/5, F1 = 4/7
    # LCS = "the cat sat" (3): as ROUGE-1
    scores = rouge(["the cat sat"], [CAT])
    assert scores == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3})
    # order matters for ROUGE-2/L only: LCS of "mat the cat" is "the cat" (2): P = 2/3, R = 2/6
    scores = rouge(["mat the cat"], [CAT])
    assert scores["rouge1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert scores["rouge2"] == pytest.approx(2 * (1 / 2) * (1 / 5) / (1 / 2 + 1 / 5))
    assert scores["rougeL"] == pytest.approx(2 * (2 / 3) * (1 / 3) / (2 / 3 + 1 / 3))
    # the Porter stemmer makes "cats" match "cat"
    assert rouge(["cats"], ["cat"])["rouge1"] == pytest.approx(1.0)


def test_bleu_by_hand():
    # "the cat sat on the mat" vs "the cat sat on a mat", clipped n-gram matches:
    #   1-grams 5/6 (the second "the" is clipped: the reference has one), 2-grams 3/5
    #   ("the cat", "cat sat", "sat on"), 3-grams 2/4, 4-grams 1/3 ("the cat sat on");
    #   equal lengths so BP = 1; BLEU = 100 · (5/6 · 3/5 · 2/4 · 1/3)^(1/4) = 100 · (1/12)^(1/4)
    assert bleu([CAT], ["the cat sat on a mat"]) == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-2)
    # a prefix of the reference: every precision is 1, BP = exp(1 - 6/5)
    assert bleu(["the cat sat on the"], [CAT]) == pytest.approx(100 * math.exp(-0.2), abs=1e-2)
    # corpus BLEU pools counts over pairs before taking precisions (not a mean of sentence BLEUs):
    # pooled 1-grams 11/12, 2-grams 8/10, 3-grams 6/8, 4-grams 4/6; lengths 12 = 12
    pooled = (11 / 12 * 8 / 10 * 6 / 8 * 4 / 6) ** 0.25
    assert bleu([CAT, CAT], [CAT, "the cat sat on a mat"]) == pytest.approx(100 * pooled, abs=1e-2)


@pytest.mark.parametrize("scorer", [bleu, rouge, text_scores])
def test_bad_pairs_raise(scorer):
    with pytest.raises(LorakitError, match="2 predictions but 1 references"):
        scorer(["a", "b"], ["a"])
    with pytest.raises(LorakitError, match="no predictions"):
        scorer([], [])


def test_prefix_and_metric_names():
    assert set(text_scores([CAT], [CAT], prefix="tf_")) == set(TEACHER_FORCED_METRICS)
    assert set(text_scores([CAT], [CAT])) == set(GENERATION_METRICS)
    assert METRICS == (LOSS_METRICS + GENERATION_METRICS + TEACHER_FORCED_METRICS + CLASSIFICATION_METRICS
                       + REGRESSION_METRICS)
    assert LOWER_IS_BETTER == {"eval_loss", "eval_ppl", "eval_dpo_loss"}
    check_metrics(LOSS_METRICS + GENERATION_METRICS + TEACHER_FORCED_METRICS)
    check_metrics(("eval_loss", *CLASSIFICATION_METRICS), "classification")
    check_metrics(("eval_loss", *REGRESSION_METRICS), "regression")
    with pytest.raises(LorakitError, match="'accuracy' is not one of task causal_lm's"):
        check_metrics(["eval_loss", "accuracy"])
    with pytest.raises(LorakitError, match=r"unknown metric 'blue' \(did you mean 'bleu'\?\)"):
        check_metrics(["eval_loss", "blue"])


# -- teacher-forced --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


class ScriptedLM(nn.Module):
    """Logits we choose: at position t, the exact next label where ``labels[t+1] != -100``,
    a fixed ordinary word (``garbage``) everywhere else — prompt, last position and padding."""

    def __init__(self, examples, vocab_size: int, garbage: int, wrong_at: int | None = None):
        super().__init__()
        self.labels = {tuple(e["input_ids"]): e["labels"] for e in examples}
        self.first = tuple(examples[0]["input_ids"])
        self.vocab_size, self.garbage, self.wrong_at = vocab_size, garbage, wrong_at

    def forward(self, input_ids, attention_mask):
        batch, width = input_ids.shape
        logits = torch.zeros(batch, width, self.vocab_size)
        logits[..., self.garbage] = 1.0
        for b in range(batch):
            n = int(attention_mask[b].sum())  # right padding: the real tokens come first
            ids = tuple(input_ids[b, :n].tolist())
            labels = self.labels[ids]
            response = [t for t in range(n - 1) if labels[t + 1] != IGNORE_INDEX]
            for i, t in enumerate(response):
                # wrong_at: predict garbage at that response position of the first example
                if not (ids == self.first and i == self.wrong_at):
                    logits[b, t, labels[t + 1]] = 5.0
        return SimpleNamespace(logits=logits)


def scripted(tokenizer, wrong_at=None):
    # responses of different token lengths, so a batch has padding
    records = [{**r, "output": r["output"] + " So it is." * (i % 3)} for i, r in enumerate(ADDITION[::9])]
    examples = encode_all(records, tokenizer, "alpaca", 128)
    garbage = tokenizer("Add", add_special_tokens=False)["input_ids"][0]
    model = ScriptedLM(examples, len(tokenizer), garbage, wrong_at)
    return records, examples, model


def test_teacher_forced_scores_response_tokens_only(tokenizer):
    records, examples, model = scripted(tokenizer)
    # different lengths in a batch of 3, so rows are padded
    assert len({len(e["input_ids"]) for e in examples[:3]}) > 1
    predictions, references = teacher_forced_texts(model, tokenizer, examples, Collator(tokenizer), 3)
    assert references == [r["output"] for r in records]
    # perfect only if prompt and pad positions (which predict "Add") are left out, and the
    # prediction at t is compared with the label at t+1: an unshifted version (logits[t] vs
    # labels[t]) would drop each response's first word and add "Add" at the eos position
    assert predictions == references
    scores = teacher_forced_scores(model, tokenizer, examples, Collator(tokenizer), 3)
    assert scores == pytest.approx({"tf_bleu": 100.0, "tf_rouge1": 1.0, "tf_rouge2": 1.0,
                                    "tf_rougeL": 1.0})


def test_teacher_forced_one_wrong_token_lowers_scores(tokenizer):
    _, examples, model = scripted(tokenizer, wrong_at=0)
    predictions, references = teacher_forced_texts(model, tokenizer, examples, Collator(tokenizer), 3)
    assert predictions[0] != references[0] and predictions[1:] == references[1:]
    scores = teacher_forced_scores(model, tokenizer, examples, Collator(tokenizer), 3)
    assert scores["tf_bleu"] < 100.0 and scores["tf_rouge1"] < 1.0


# -- generation ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from lorakit.models import load_model

    return load_model(str(tiny_model_dir))


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    records = [{"instruction": "Add 3 and 4." + " Please." * i, "input": "", "output": ""}
               for i in (2, 0, 3, 1)] + [{"instruction": "Add 1 and 2.", "input": "as a sum", "output": ""}]
    prompts = [encode_prompt(r, tokenizer, "alpaca") for r in records]
    assert len({len(p) for p in prompts}) == len(prompts)
    model.train()  # generate must switch to eval and restore the flag
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=4)
    assert model.training
    model.eval()
    single = [generate(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(batched)  # the random model says something, so the comparison means something
    # order is the caller's, whatever the internal length-sorted batching
    assert generate(model, tokenizer, prompts[::-1], 8, 3) == single[::-1]


def test_encode_prompt_is_the_prefix_of_encode(tokenizer):
    for record in ADDITION[:4]:
        prompt, full = encode_prompt(record, tokenizer, "alpaca"), encode(record, tokenizer, "alpaca", 256)
        assert prompt[0] == tokenizer.bos_token_id
        assert full["input_ids"][:len(prompt)] == prompt
        assert full["labels"][:len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert full["labels"][len(prompt)] != IGNORE_INDEX


def test_generation_scores_writes_jsonl(tiny, tmp_path):
    model, tokenizer = tiny
    records = [ADDITION[1], {**ADDITION[2], "input": "quickly"}, ADDITION[3]]
    out = tmp_path / "sub" / "predictions.jsonl"
    # max_length 40 cuts the prompts (36 tokens, and longer with the input), keeping their start
    scores = generation_scores(model, tokenizer, records, "alpaca", max_length=40, max_new_tokens=6,
                               batch_size=2, out_path=out)
    assert set(scores) == set(GENERATION_METRICS)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [list(row) for row in rows] == [["instruction", "input", "reference", "prediction"]] * 3
    assert [row["reference"] for row in rows] == [r["output"] for r in records]
    assert rows[1]["input"] == "quickly"
    prompts = [encode_prompt(r, tokenizer, "alpaca")[:40] for r in records]
    assert [row["prediction"] for row in rows] == generate(model, tokenizer, prompts, 6, 1)
    assert scores == pytest.approx(text_scores([row["prediction"] for row in rows],
                                               [row["reference"] for row in rows]))
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary left behind


@pytest.mark.parametrize("max_new_tokens", [0, 4097])
def test_bad_generation_settings_raise(tiny, max_new_tokens):
    model, tokenizer = tiny
    with pytest.raises(LorakitError, match="max_new_tokens"):
        generate(model, tokenizer, [[1, 5, 6]], max_new_tokens=max_new_tokens, batch_size=1)
    with pytest.raises(LorakitError, match="max_new_tokens"):
        generation_scores(model, tokenizer, ADDITION[:1], "alpaca", 64, max_new_tokens, 1, None)
    with pytest.raises(LorakitError, match="batch_size"):
        generate(model, tokenizer, [[1, 5, 6]], max_new_tokens=4, batch_size=0)
