"""Greedy generation from prompts, and BLEU/ROUGE of the generated responses.

Each prompt is the exact token sequence training puts before the response
(``encode_prompt``), so the model continues where it learned to answer. Batches are
left-padded (``attention_mask`` 0 on pads) so every prompt ends at the same position and the
new tokens start together; prompts are sorted by length first so a batch wastes few pads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.encode import encode_prompt, reference
from ..errors import LorakitError
from ..io.atomic import write_text_atomic
from ..io.json_text import json_text
from ..status import bar, phase
from .metrics import text_scores

MAX_NEW_TOKENS = 4096


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def pad_id_of(tokenizer: Any) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise LorakitError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad_id)


def _check_settings(max_new_tokens: int, batch_size: int) -> None:
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise LorakitError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS} "
                           f"(got {max_new_tokens}); pass a token count in that range")
    if batch_size < 1:
        raise LorakitError(f"batch_size must be >= 1 (got {batch_size}); pass a positive batch size")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompts)
    input_ids = [[pad_id] * (width - len(ids)) + list(ids) for ids in prompts]
    # from lengths, not from comparing with pad_id: pad may equal a real token (eos)
    mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]
    return (torch.tensor(input_ids, dtype=torch.long, device=device),
            torch.tensor(mask, dtype=torch.long, device=device))


def generate(model: nn.Module, tokenizer: Any, prompts_ids: list[list[int]], max_new_tokens: int,
             batch_size: int) -> list[str]:
    """Greedy continuations of each prompt (token ids), decoded and stripped, in input order,
    with a bar over the prompts."""
    _check_settings(max_new_tokens, batch_size)
    if any(len(ids) == 0 for ids in prompts_ids):
        raise LorakitError("a prompt has no tokens; every prompt needs at least one token to continue")
    pad_id, device = pad_id_of(tokenizer), model_device(model)
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    texts: list[str] = [""] * len(prompts_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            answers = bar(total=len(order), desc="generate", unit="answer", leave=False)
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                input_ids, attention_mask = left_pad([prompts_ids[i] for i in chunk], pad_id, device)
                output = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                    max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                # every row is left-padded to the same width, so new tokens start at one column
                new_tokens = output[:, input_ids.shape[1]:]
                for i, row in zip(chunk, new_tokens):
                    texts[i] = tokenizer.decode(row.tolist(), skip_special_tokens=True).strip()
                answers.update(len(chunk))
            answers.close()
    finally:
        model.train(was_training)
    return texts


def generation_scores(model: nn.Module, tokenizer: Any, records: Sequence[Mapping[str, str]],
                      template: str, max_length: int, max_new_tokens: int, batch_size: int,
                      out_path: Path | None = None) -> dict[str, float]:
    """BLEU/ROUGE of greedy responses against each record's reference (Alpaca output, completion,
    or a conversation's last assistant turn given the turns before it); optionally a JSONL of them.

    A prompt keeps its first ``max_length`` tokens, as training does. Each JSONL line holds
    ``instruction`` and ``input`` (Alpaca) or ``prompt`` (the decoded prompt), ``reference`` and
    ``prediction``.
    """
    _check_settings(max_new_tokens, batch_size)
    if max_length < 1:
        raise LorakitError(f"max_length must be >= 1 (got {max_length}); pass a positive token count")
    if not records:
        raise LorakitError("no records to generate from; pass at least one evaluation record")
    prompts = [encode_prompt(record, tokenizer, template)[:max_length] for record in records]
    predictions = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    references = [reference(record) for record in records]
    scores = text_scores(predictions, references)
    if out_path is not None:
        sources = [{"instruction": record["instruction"], "input": record.get("input") or ""}
                   if "instruction" in record else {"prompt": tokenizer.decode(prompt)}
                   for record, prompt in zip(records, prompts)]
        lines = [json_text({**source, "reference": answer, "prediction": prediction}, ensure_ascii=False)
                 for source, answer, prediction in zip(sources, references, predictions)]
        write_text_atomic(out_path, "".join(line + "\n" for line in lines))
    return scores


def generate_file(model: nn.Module, tokenizer: Any, records: Sequence[Mapping[str, Any]], template: str,
                  max_length: int, max_new_tokens: int, batch_size: int, out_path: Path) -> None:
    """Greedy answers to every record, written as JSONL lines ``prompt``, ``reference`` (when the
    record has one) and ``prediction``. A conversation is answered after its last turn (or, ending
    with the assistant, that turn is the reference); a text record is continued. A prompt keeps its
    last ``max_length`` tokens (the end, where the answer starts)."""
    _check_settings(max_new_tokens, batch_size)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [(bos + list(tokenizer(record["text"], add_special_tokens=False)["input_ids"]) if "text" in record
                else encode_prompt(record, tokenizer, template, answer_next=True))[-max_length:] for record in records]
    with phase("generate", f"generating {len(prompts)} answers (greedy, up to {max_new_tokens} tokens each)"):
        predictions = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    lines = []
    for record, prompt, prediction in zip(records, prompts, predictions):
        answer = reference(record, answer_next=True)
        known = {} if answer is None else {"reference": answer}
        lines.append(json_text({"prompt": tokenizer.decode(prompt), **known, "prediction": prediction},
                                ensure_ascii=False))
    write_text_atomic(out_path, "".join(line + "\n" for line in lines))
