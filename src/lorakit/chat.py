"""Talking to a model, with or without an adapter: ``lorakit chat``.

Each reply renders the conversation so far with the tokenizer's chat template (generation prompt
included) and samples a continuation (``temperature`` 0: greedy), streaming the tokens as they are
generated; it stops at eos or at the template's end-of-turn token. ``/reset`` starts the
conversation over, ``/exit`` (or end of input) ends the session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TextStreamer

from .data.conversation import end_of_turn_token
from .errors import LorakitError
from .evaluate.generation import model_device


@dataclass(frozen=True)
class Sampling:
    """How replies are sampled."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = None

    def check(self) -> Sampling:
        if not 0 <= self.temperature < float("inf"):
            raise LorakitError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LorakitError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise LorakitError(f"--max-new-tokens must be in 1..4096, got {self.max_new_tokens}")
        return self


def reply(model: nn.Module, tokenizer: Any, messages: list[dict[str, str]], sampling: Sampling,
          stream: bool = True) -> str:
    """The model's next assistant turn after ``messages`` (streamed to stdout with ``stream``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise LorakitError("lorakit chat needs a tokenizer with a chat template, and this model's has none")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model_device(model))
    stops = sorted({token for token in (tokenizer.eos_token_id, end_of_turn_token(tokenizer)) if token is not None})
    if not stops:
        raise LorakitError("the tokenizer has neither an eos nor an end-of-turn token, so a reply would never stop")
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    sample = sampling.temperature > 0
    options = {"do_sample": sample, **({"temperature": sampling.temperature, "top_p": sampling.top_p} if sample
                                      else {"temperature": None, "top_p": None, "top_k": None})}
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    model.eval()
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=sampling.max_new_tokens, eos_token_id=stops,
                                pad_token_id=stops[0] if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
                                streamer=streamer, **options)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


EXIT = ("/exit", "/quit")
SPEAKER = "model> "  # before each streamed reply, as "you> " before each line read


def run_chat(model: nn.Module, tokenizer: Any, sampling: Sampling, system: str | None = None,
             read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> None:
    """The interactive loop: read a line, stream the reply; ``/reset``, ``/exit``."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    write("lorakit chat: /reset starts over, /exit (or Ctrl-D) ends")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            break
        if line in EXIT:
            break
        if line == "/reset":
            messages = list(start)
            write("(conversation reset)")
            continue
        if line.startswith("/") and " " not in line:  # a mistyped command is not a message
            write(f"(unknown command {line}: /reset starts over, /exit ends)")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        sys.stdout.write(SPEAKER)  # the reply streams to stdout after it
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": reply(model, tokenizer, messages, sampling)})
