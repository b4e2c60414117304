"""Records → token ids with the loss on what the model should learn to write, and the batch collator.

Alpaca records and prompt/completion pairs: the loss on the response (and eos); conversations: on
the assistant turns chosen by ``loss_on`` (``conversation.encode_conversation``); plain text: on
every token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import LorakitError
from .conversation import encode_conversation, render_prompt
from .formats import sample_kind
from .prompts import format_prompt
from .tokens import IGNORE_INDEX, Encoded

__all__ = ["IGNORE_INDEX", "Collator", "Encoded", "encode", "encode_all", "encode_prompt", "reference"]


def encode_prompt(record: Mapping[str, Any], tokenizer: Any, template: str, answer_next: bool = False) -> list[int]:
    """The token ids ``encode`` puts before the response: [bos] + prompt (bos for alpaca only); for
    a conversation, every turn before the last assistant one and the assistant header (with
    ``answer_next``, every turn of a conversation that does not end with the assistant).

    Generation feeds exactly these ids, so the model continues from where training placed
    the response.
    """
    kind = sample_kind(record)
    if kind == "preference":  # the prompt both answers continue
        return encode_prompt(record["chosen"], tokenizer, template, answer_next)
    if kind == "conversation":
        return render_prompt(tokenizer, record["messages"], answer_next)
    if kind == "text":
        raise LorakitError("plain-text records have no reference answer to generate and score; "
                           "drop the generation metrics (bleu, rouge*, tf_*) from eval.metrics")
    prompt = record["prompt"] if kind == "prompt_completion" else format_prompt(record, template, tokenizer)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if (template == "alpaca" or kind == "prompt_completion") and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    return prompt_ids


def reference(record: Mapping[str, Any], answer_next: bool = False) -> str | None:
    """The answer generation is scored against: the output, the completion, or a conversation's last
    assistant turn; with ``answer_next`` a conversation that does not end with the assistant is
    answered after its last turn and has none (``None``, as for text)."""
    kind = sample_kind(record)
    if kind == "preference":  # scored against the chosen answer
        return reference(record["chosen"], answer_next)
    if kind == "conversation":
        messages = record["messages"]
        if answer_next and messages[-1]["role"] != "assistant":
            return None
        return [m for m in messages if m["role"] == "assistant"][-1]["content"]
    if kind == "text":
        return None
    return record.get("completion") if kind == "prompt_completion" else record.get("output")


def encode(record: Mapping[str, Any], tokenizer: Any, template: str, max_length: int,
           loss_on: str = "assistant", where: str = "the conversation") -> Encoded:
    """One record as ``input_ids`` and ``labels``; for Alpaca records and prompt/completion pairs
    ``input_ids`` = [bos] + prompt + response + [eos], ``labels`` = -100 over bos and prompt.

    Prompt and response are tokenised separately so the boundary is exact (a joint
    tokenisation could merge tokens across it). bos is added for the alpaca template only: a
    chat template writes its own start tokens. The result is cut to ``max_length`` tokens from
    the right; a prompt longer than that leaves no response tokens, hence no loss.
    """
    if max_length < 1:
        raise LorakitError(f"max_length must be >= 1 (got {max_length}); pass a positive token count")
    if tokenizer.eos_token_id is None:
        raise LorakitError("the tokenizer has no eos token; set tokenizer.eos_token before encoding")
    kind = sample_kind(record)
    if kind == "conversation":
        return encode_conversation(tokenizer, record["messages"], max_length, loss_on, where)
    if kind == "text":
        ids = [*([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []),
               *tokenizer(record["text"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        return {"input_ids": ids[:max_length], "labels": ids[:max_length]}
    prompt_ids = encode_prompt(record, tokenizer, template)
    response_ids = list(tokenizer(reference(record), add_special_tokens=False)["input_ids"])
    answer = [*response_ids, tokenizer.eos_token_id]
    input_ids = prompt_ids + answer
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def encode_all(records: Iterable[Mapping[str, Any]], tokenizer: Any, template: str,
               max_length: int, loss_on: str = "assistant") -> list[Encoded]:
    """``encode`` every record, in order."""
    return [encode(record, tokenizer, template, max_length, loss_on, f"record {index} of the split")
            for index, record in enumerate(records)]


class Collator:
    """Right-pads a list of encoded records into LongTensors for a causal-LM forward pass."""

    def __init__(self, tokenizer: Any) -> None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise LorakitError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        self.pad_id = int(pad_id)

    def __call__(self, batch: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise LorakitError("cannot collate an empty batch; pass at least one encoded record")
        width = max(len(item["input_ids"]) for item in batch)
        input_ids, attention_mask, labels = [], [], []
        for item in batch:
            # the mask comes from lengths, not from comparing with pad_id: pad often equals eos,
            # and the real eos at the end of each example must stay visible
            n, pad = len(item["input_ids"]), width - len(item["input_ids"])
            input_ids.append([*item["input_ids"], *[self.pad_id] * pad])
            attention_mask.append([1] * n + [0] * pad)
            labels.append([*item["labels"], *[IGNORE_INDEX] * pad])
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
