"""GRPO: group relative policy optimization (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

For each prompt ``q`` of a micro-batch the policy samples ``G`` completions ``o_1 … o_G``
(``train.num_generations``), each scored by the weighted sum of the reward functions
(``lorakit.rewards``), ``r_i``. The advantage of every token of ``o_i`` is its group-normalised reward

    Â_i = (r_i − mean(r)) / (std(r) + 10⁻⁴)      (std over the group, unbiased, as TRL computes it)

and the loss of the micro-batch is

    L = Σ_i (1/|o_i|) Σ_t −[ min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1 − ε, 1 + ε) Â_i) − β·KL_{i,t} ],
    ρ_{i,t} = π_θ(o_{i,t} | q, o_{i,<t}) / π_old(o_{i,t} | …),
    KL_{i,t} = π_ref/π_θ − log(π_ref/π_θ) − 1      (the unbiased estimator of the paper, Eq. 4)

divided by the step's number of completions (its *units*). ``π_ref`` is the exact original model
(``adapter.original()``, as for DPO: for every preset, with no second model in memory).

Deviations and choices:

- One optimizer step per sampled batch (the paper's μ = 1): ``π_old`` is the policy that sampled,
  so ``ρ = 1`` in value (its gradient is the policy gradient) and the clip never acts; the clip
  fraction is logged all the same.
- The prompt of a record is everything before its first trained token (the Alpaca prompt, a
  conversation before its assistant turn), and the reference answer the rewards see is the record's
  trained text (the output, completion or assistant turn). Records need an answer; rewards may ignore it.
- Sampling is seeded from ``(train.seed, step, micro-batch, process)``: a resumed run samples what
  the uninterrupted one sampled, so it ends at the same adapter with no sampler state to save.
- ``π`` is the model's softmax at the sampling temperature ``T`` (``train.temperature``): the
  log-probabilities of the policy and of the reference divide the logits by ``T``, as sampling
  does (and as TRL does), so ``π_θ`` is the distribution the completions were drawn from. The
  sampler is plain temperature sampling: the top-k, top-p, min-p, typical-p, ε/η cutoffs,
  repetition penalty and n-gram blocking a model's generation config may set are switched off
  (``PLAIN_SAMPLING``), since they would draw from another distribution than ``π_θ``.
- Completions end at an end token (included, so the policy learns to stop): the tokenizer's eos
  or any eos of the model's generation config (an end-of-turn token), or after
  ``train.max_completion_length`` tokens. Sampling and every forward pass run without dropout
  (the adapter's ``dropout`` does not act, as with TRL's default ``disable_dropout``), so that
  ``π_θ`` is the policy that sampled and the KL of the first step is exactly 0. The loss's
  forward passes keep the model's training mode (dropout set to 0 instead), so gradient
  checkpointing, which acts in training mode only, still saves memory there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapter import Adapter
from ..data import IGNORE_INDEX
from ..evaluate.generation import left_pad, model_device, pad_id_of
from ..evaluate.loss import eval_mode
from ..rewards import WeightedReward
from ..status import bar
from .objectives import GRPO_METRICS, Objective

ADVANTAGE_EPS = 1e-4
# the sampler is temperature sampling alone: every other logits processor a model's generation
# config may set is switched off here (given as arguments, they take precedence over it)
PLAIN_SAMPLING = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                  "eta_cutoff": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


class Grpo(Objective):
    """GRPO against ``adapter.original()`` (see the module docstring); batches are ``Collator``'s."""

    name = "grpo"
    final_metrics = True
    metrics = GRPO_METRICS

    def __init__(self, adapter: Adapter, tokenizer: Any, rewards: list[WeightedReward], train: Any,
                 process: int = 0) -> None:
        """``train``: the run's ``TrainConfig`` (``num_generations``, ``grpo_beta``, ``clip_epsilon``,
        ``max_completion_length``, ``temperature``, ``seed``)."""
        self.adapter, self.tokenizer, self.rewards, self.process = adapter, tokenizer, rewards, process
        self.G, self.beta, self.epsilon = train.num_generations, train.grpo_beta, train.clip_epsilon
        self.max_new_tokens, self.temperature, self.seed = train.max_completion_length, train.temperature, train.seed
        self.begin_step(0)

    # -- a step ------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Start step ``step`` (0-based): its sampling seeds, and fresh statistics for its log record."""
        self.step, self.micro = step, 0
        self.stats: dict[str, list[float]] = {}

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] * self.G

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample, score and take the clipped loss of one micro-batch (the module docstring's ``L``)."""
        prompts, references = self.prompts(batch)
        self.micro += 1
        completions = self.sample(prompts)
        texts = [self.decode(c) for c in completions]
        rewards = self.score(texts, [r for r in references for _ in range(self.G)])
        advantages = group_advantages(rewards, self.G).to(model_device(self.adapter.model))
        rows = aligned([prompts[i // self.G] for i in range(len(completions))], completions,
                       pad_id_of(self.tokenizer), model_device(model))
        with without_dropout(model):  # π_θ is the policy that sampled (ρ = 1 at the start of a step)
            logps = token_logps(model, rows, self.temperature)
        if self.beta:
            with torch.no_grad(), self.adapter.original(), eval_mode(self.adapter.model):
                reference = token_logps(self.adapter.model, rows, self.temperature)
        else:  # β = 0: no KL term, so the original model is not run
            reference = logps.detach()
        completion_mask = rows.completion
        loss, kl, clipped = clipped_loss(logps, logps.detach(), reference, advantages, completion_mask,
                                         self.epsilon, self.beta)
        self._record(rewards, texts, completion_mask, kl, clipped)
        return loss

    def prompts(self, batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[str | None]]:
        """Each row's prompt (its tokens before the first trained one) and reference answer (its
        trained tokens; ``None`` for an eval row whose answer ``data.max_length`` cut away)."""
        prompts, references = [], []
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
            ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
            first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
            prompts.append(ids[:first])
            answer = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
            references.append(self.decode(answer) if answer else None)
        return prompts, references

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], greedy: bool = False) -> list[list[int]]:
        """``G`` completions of each prompt (one, greedy, for evaluation), each cut after its first eos."""
        model, pad_id = self.adapter.model, pad_id_of(self.tokenizer)
        eos = end_tokens(model, self.tokenizer)
        repeats = 1 if greedy else self.G
        ids, mask = left_pad([p for p in prompts for _ in range(repeats)], pad_id, model_device(model))
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": self.temperature}
        devices = [ids.device] if ids.is_cuda else []
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._sample_seed())
            output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                    pad_token_id=pad_id, eos_token_id=eos, **sampling, **PLAIN_SAMPLING)
        return [_until_eos(row.tolist(), eos) for row in output[:, ids.shape[1]:]]

    def _sample_seed(self) -> int:
        """The seed of this micro-batch's sampling: the same for the same run, step and micro-batch."""
        return (self.seed * 1_000_003 + self.step * 10_007 + self.micro * 101 + self.process) % 2**63

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    def score(self, texts: list[str], references: list[str | None]) -> torch.Tensor:
        """Every completion's weighted reward (float64), each function's mean kept for the log."""
        total = torch.zeros(len(texts), dtype=torch.float64)
        for reward in self.rewards:
            scores = torch.tensor(reward(texts, references), dtype=torch.float64)
            self.stats.setdefault(f"reward_{reward.name}", []).append(float(scores.mean()))
            total += reward.weight * scores
        return total

    def _record(self, rewards: torch.Tensor, texts: list[str], completion_mask: torch.Tensor,
                kl: torch.Tensor, clipped: torch.Tensor) -> None:
        lengths = completion_mask.sum(dim=1).double()
        for name, value in (("reward", rewards.mean()), ("reward_std", grouped_std(rewards, self.G)),
                            ("kl", kl), ("completion_length", lengths.mean()), ("clip_fraction", clipped)):
            self.stats.setdefault(name, []).append(float(value))

    def step_metrics(self) -> dict[str, float]:
        """The step's means of what ``loss_sum`` recorded (rewards per function, KL, lengths, clipping)."""
        return {name: sum(values) / len(values) for name, values in self.stats.items()}

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: Sequence[Any], collate: Callable, batch_size: int,
                 device: torch.device | str) -> dict[str, float]:
        """``eval_reward``: the mean weighted reward of greedy completions of the eval prompts (and
        ``eval_reward_<function>`` each), the rewards' statistics of the training step untouched."""
        kept, self.stats = self.stats, {}
        answers = bar(total=len(examples), desc="eval reward", unit="answer", leave=False)
        try:
            totals = []
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start:start + batch_size])
                prompts, references = self.prompts(batch)
                texts = [self.decode(c) for c in self.sample(prompts, greedy=True)]
                totals.append(self.score(texts, references))
                answers.update(len(prompts))
            means = {f"eval_{name}": sum(v) / len(v) for name, v in self.stats.items()}
        finally:
            self.stats = kept
            answers.close()
        rewards = torch.cat(totals) if totals else torch.zeros(0, dtype=torch.float64)
        return {"eval_reward": float(rewards.mean()) if rewards.numel() else math.nan, **means}


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """``(r − mean) / (std + 10⁻⁴)`` within each consecutive group of ``group`` rewards (float32)."""
    grouped = rewards.view(-1, group)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)).view(-1).float()


def grouped_std(rewards: torch.Tensor, group: int) -> float:
    """The mean over groups of the rewards' standard deviation within a group (0: nothing to learn from)."""
    return float(rewards.view(-1, group).std(dim=1).mean())


@dataclass
class Aligned:
    """Prompts and completions laid out as generation saw them: each prompt left-padded to the
    longest, each completion right-padded to the longest (``C`` tokens), so every completion starts
    in the same column and fills the last ``C`` columns."""

    ids: torch.Tensor  # (rows, P + C)
    mask: torch.Tensor  # 1 on real tokens
    positions: torch.Tensor  # position ids counted over real tokens, as generate() counts them
    completion: torch.Tensor  # (rows, C): 1 on completion tokens, 0 on the padding after them


def aligned(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device) -> Aligned:
    """The rows ``prompts[i] + completions[i]`` as ``Aligned`` (one prompt per completion)."""
    P, C = max(len(p) for p in prompts), max(1, max(len(c) for c in completions))
    ids = torch.full((len(prompts), P + C), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        ids[row, P - len(prompt):P + len(completion)] = torch.tensor(prompt + completion)
        mask[row, P - len(prompt):P + len(completion)] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    return Aligned(ids.to(device), mask.to(device), positions.to(device), mask[:, P:].float().to(device))


def token_logps(model: nn.Module, rows: Aligned, temperature: float = 1.0) -> torch.Tensor:
    """``log π(o_t | q, o_<t)`` of every completion column (``(rows, C)``), ``π`` the softmax of the
    logits divided by ``temperature`` (the sampler's). Where the model's forward takes
    ``logits_to_keep`` (transformers' causal LMs), only the ``C`` columns that predict a completion
    token go through the output layer and the softmax: the prompt's do not."""
    C = rows.completion.shape[1]
    keep = {"logits_to_keep": C + 1} if _keeps_logits(model) else {}
    logits = model(input_ids=rows.ids, attention_mask=rows.mask, position_ids=rows.positions, **keep).logits
    logits = logits[:, -(C + 1):-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, rows.ids[:, -C:, None]).squeeze(-1)


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the (unwrapped) model's forward takes ``logits_to_keep``."""
    inner = getattr(model, "module", model)  # under DDP, the wrapped model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def clipped_loss(logps: torch.Tensor, old: torch.Tensor, reference: torch.Tensor, advantages: torch.Tensor,
                 completion_mask: torch.Tensor, epsilon: float, beta: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO's loss summed over completions (each its tokens' mean), the mean KL and the clipped fraction.

    Args:
        logps, old, reference: per-token log-probabilities of the policy (differentiable), of the
            policy that sampled, and of the original model, ``(rows, length − 1)``.
        advantages: one per row; completion_mask: which positions of ``logps`` are completion tokens.
    """
    ratio = torch.exp(logps - old)
    surrogate = torch.minimum(ratio * advantages[:, None],
                              torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages[:, None])
    delta = reference - logps
    kl = torch.exp(delta) - delta - 1
    per_token = -(surrogate - beta * kl)
    tokens = completion_mask.sum(dim=1).clamp_min(1)
    loss = ((per_token * completion_mask).sum(dim=1) / tokens).sum()
    count = completion_mask.sum().clamp_min(1)
    clipped = ((ratio - 1).abs() > epsilon).float()
    return loss, (kl.detach() * completion_mask).sum() / count, (clipped * completion_mask).sum() / count


def end_tokens(model: nn.Module, tokenizer: Any) -> list[int]:
    """The ids that end a completion: the tokenizer's eos and every eos of the model's generation
    config (chat models often end a turn with a token of their own)."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)  # a transformers model has one; a bare module none
    configured = config.eos_token_id if config is not None else None
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids if i is not None})


def _until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """``tokens`` up to and including the first end token (all of them without one)."""
    ends = [i for i, token in enumerate(tokens) if token in eos]
    return tokens[:ends[0] + 1] if ends else tokens


@contextmanager
def without_dropout(model: nn.Module) -> Iterator[None]:
    """``model`` in its own mode with every dropout at 0 inside the block: its forward is the
    evaluation forward, while gradient checkpointing (which acts in training mode only) still acts.
    Covers ``nn.Dropout`` modules (the adapter's among them) and the attention dropout that
    transformers' attention modules read from a float attribute."""
    saved: list[tuple[nn.Module, str, float]] = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            saved.append((module, "p", module.p))
        elif isinstance(getattr(module, "attention_dropout", None), float):
            saved.append((module, "attention_dropout", module.attention_dropout))
    try:
        for module, name, _ in saved:
            setattr(module, name, 0.0)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
