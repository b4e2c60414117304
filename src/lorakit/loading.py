"""The one place that loads what a job needs — data, base model, adapter — for ``lorakit train``,
``eval``, ``merge``, ``export`` and ``compare``.

Data is read and checked before any model is loaded, so a config error costs no loading time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter import Adapter
from .api import load
from .config import RunConfig
from .data import IGNORE_INDEX, Collator, encode_all, load_records, split_records
from .data import encode as encode_one
from .data.conversation import warn_if_never_stops
from .data.formats import sample_kind
from .data.labelled import LabelledCollator, Labels, check_labels, encode_labelled, load_labelled
from .data.packing import FlatCollator, PackedCollator, pack
from .data.preference import SIDES, PairCollator, answered, encode_pair
from .data.records import prompt_lines
from .errors import LorakitError
from .evaluate.metrics import HELD_OUT
from .evaluate.suite import evaluate_run
from .heads import task_record
from .io.adapter_files import read_adapter_config
from .models import load_model, model_path

Split = tuple[list[dict[str, str]], list[dict[str, str]]]


@dataclass
class Examples:
    """A split's encoded examples (labels where the loss is) and the batch collator; ``skipped``
    counts the training records left out because nothing of what they train fits in
    ``data.max_length``."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    collate: Callable
    skipped: int = 0
    train_collate: Callable | None = None  # packed training rows (eval examples stay unpacked)
    lengths: list[int] | None = None  # of the training examples, to group batches by length

    def __post_init__(self) -> None:
        self.train_collate = self.train_collate or self.collate


def load_split(config: RunConfig) -> Split:
    """The train records and those every evaluation uses (read and checked before any model is
    loaded). With ``data.eval_path`` every record of that file evaluates and ``data.path`` only
    trains. With ``data.evaluate_on: validation`` the evaluations use the validation split instead
    (``validation_split``), and the eval split is not read at all."""
    d = config.data
    records = load_eval_file(config, d.path)
    if d.eval_path is None and d.evaluate_on == "eval":
        return split_records(records, d.train_size, d.eval_size, d.offset, d.shuffle_seed)
    carved = d.eval_size if d.eval_path is None else 0  # the eval split stays out of training either way
    train = split_records(records, d.train_size, carved, d.offset, d.shuffle_seed)[0]
    if d.evaluate_on == "validation":
        return validation_split(config, train)
    return train, load_eval_file(config, d.eval_path)


def validation_split(config: RunConfig, train: list[dict[str, Any]]) -> Split:
    """``(train, validation)``: the records of ``data.validation_path``, else the last
    ``data.validation_size`` training records (a tenth by default), which then do not train."""
    d = config.data
    if d.validation_path is not None:
        return train, load_eval_file(config, d.validation_path)
    size = d.validation_size or max(1, len(train) // 10)
    if size >= len(train):
        raise LorakitError(f"data.validation_size {size} leaves no training record of {len(train)}; carve fewer, "
                           "or give data.validation_path")
    return train[:-size], train[-size:]


def describe_split(config: RunConfig) -> str:
    """Which records the run's evaluations use, in words (every tune output says it)."""
    d = config.data
    if d.evaluate_on == "validation":
        where = (f"every record of {d.validation_path}" if d.validation_path else
                 f"{d.validation_size or 'a tenth'} of the training records, carved off their end; they do not train")
        return f"validation split ({where}); the eval split is not used"
    return f"eval split ({f'every record of {d.eval_path}' if d.eval_path else f'{d.eval_size} records'})"


def load_held_out(config: RunConfig) -> list[dict[str, Any]] | None:
    """The records of ``data.held_out_path`` (None without one), read and checked before any model loads."""
    path = config.data.held_out_path
    return None if path is None else load_eval_file(config, path)


def load_eval_file(config: RunConfig, path: str, format: str | None = None, answered: bool = True
                   ) -> list[dict[str, Any]]:
    """Every record of ``path`` (in ``format``, default ``data.format``) as an evaluation set
    (``answered=False``: conversations may end without an answer, for generation); for
    classification and regression, the labelled texts of ``data``'s columns."""
    d, task = config.data, config.task
    if task.type != "causal_lm":
        return load_labelled(path, d.text_column, d.text_pair_column, d.label_column, task.type, task.labels)
    if not answered and Path(path).suffix.lower() == ".txt":
        return prompt_lines(path)
    return load_records(path, format or d.format, d.system_prompt, d.roles, answered, d.loss_on)


def labels_of(config: RunConfig, split: Split) -> Labels | None:
    """The classes of a classification config (``task.labels``, else those of the training and
    eval records together); ``Labels(None)`` for regression; ``None`` for causal LMs. Every
    record's label is checked against them here, before any model loads (each value itself was
    checked when its file was read)."""
    task = config.task
    if task.type == "causal_lm":
        return None
    values = [record["label"] for records in split for record in records]
    labels = Labels.of(task.type, values, task.labels, task.num_labels)
    check_labels(labels, split)
    check_f1(config, labels)
    return labels


def check_f1(config: RunConfig, labels: Labels) -> None:
    """Refuse the binary ``f1`` metric for a task of other than 2 classes."""
    if "f1" in config.eval.metrics and labels.num_labels != 2:
        raise LorakitError(f"eval.metrics f1 is binary F1, but the task has {labels.num_labels} classes; use f1_macro")


def model_labels(model: nn.Module) -> Labels | None:
    """The classes a sequence classifier was built for (``None``: a causal LM)."""
    return Labels.from_record(task_record(model) or {"type": "causal_lm"})


def load_base(config: RunConfig, device: torch.device | str | None = None,
              labels: Labels | None = None) -> tuple[nn.Module, Any]:
    """The base model of ``config`` (frozen, on ``device``; a sequence classifier for ``labels``)
    and its tokenizer."""
    m = config.model
    model, tokenizer = load_model(m.path, dtype=m.dtype, device=device, quantize=m.quantize,
                                  compute_dtype=m.compute_dtype, labels=labels)
    if m.attention is not None:
        set_attention(model, m.attention)
    return model, tokenizer


def set_attention(model: nn.Module, attention: str) -> None:
    """Run ``model``'s attention with the kernel ``attention`` (``model.attention``), or refuse in one line."""
    try:
        model.set_attn_implementation(attention)
    except (ValueError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LorakitError(f"model.attention {attention} does not run here ({reason}); choose another "
                           "model.attention or null") from None
    if model.config._attn_implementation != attention:
        raise LorakitError(f"{type(model).__name__} cannot switch its attention to {attention}; choose another "
                           "model.attention or null")


def encode(config: RunConfig, tokenizer: Any, split: Split, labels: Labels | None = None) -> Examples:
    """The split's records as examples; a training record with no trained token left after the cut
    at ``data.max_length`` (a prompt longer than that) is skipped, said once, and counted.
    Preference pairs (``train.objective: dpo``) become pairs of examples, collated chosen-first;
    labelled texts (classification, regression: ``labels``) their token ids and class."""
    d = config.data
    if labels is not None:
        train = encode_labelled(split[0], tokenizer, labels, d.max_length, "training record")
        return Examples(train, encode_labelled(split[1], tokenizer, labels, d.max_length, "eval record"),
                        LabelledCollator(tokenizer),
                        lengths=[len(e["input_ids"]) for e in train] if d.group_by_length else None)
    if _check_objective(config, split):
        return _encode_pairs(config, tokenizer, split)
    if any("messages" in record for record in split[0][:1]):
        warn_if_never_stops(tokenizer)
    encoded = encode_all(split[0], tokenizer, d.template, d.max_length, d.loss_on)
    train = _kept(encoded, [any(label != IGNORE_INDEX for label in e["labels"]) for e in encoded], d.max_length)
    evaluated = encode_all(split[1], tokenizer, d.template, d.max_length, d.loss_on)
    if config.train.objective == "grpo":
        _warn_cut_references(train + evaluated, d.max_length)
    collate = Collator(tokenizer)
    if d.packing or d.padding_free:
        check_packing(config)
    packed = pack(train, d.max_length) if d.packing else None
    train_collate = FlatCollator() if d.padding_free else PackedCollator(collate.pad_id) if d.packing else None
    return Examples(packed or train, evaluated, collate, skipped=len(encoded) - len(train), train_collate=train_collate,
                    lengths=[len(example["input_ids"]) for example in train] if d.group_by_length else None)


def _check_objective(config: RunConfig, split: Split) -> bool:
    """Whether the split holds preference pairs, which ``train.objective: dpo`` needs and only it uses."""
    first = next((records[0] for records in split if records), None)
    pairs = first is not None and sample_kind(first) == "preference"
    if pairs and config.train.objective != "dpo":
        raise LorakitError("the data holds preference pairs (chosen/rejected); train on them with "
                           "train.objective: dpo")
    if first is not None and sample_kind(first) == "text" and config.train.objective == "grpo":
        raise LorakitError("train.objective grpo samples answers to prompts, and plain-text records have none; give "
                           "records with a prompt and its answer (alpaca, messages, prompt_completion)")
    if first is not None and not pairs and config.train.objective == "dpo":
        raise LorakitError("train.objective dpo needs preference records (prompt, chosen, rejected); the data holds "
                           f"{sample_kind(first)} records")
    return pairs


def _warn_cut_references(examples: list[Any], max_length: int) -> None:
    """GRPO's rewards read a record's answer as its reference: say how many reach ``max_length``,
    where the cut may have shortened the answer (``42`` read as ``4``)."""
    cut = sum(len(example["input_ids"]) >= max_length for example in examples)
    if cut:
        warnings.warn(f"{cut} of {len(examples)} records reach data.max_length={max_length}, so the cut may have "
                      "shortened the reference answers the rewards read; raise data.max_length", stacklevel=3)


def _kept(encoded: list[Any], keep: list[bool], max_length: int) -> list[Any]:
    """The training examples that keep a trained token; a warning counts the others."""
    train = [example for example, ok in zip(encoded, keep) if ok]
    if encoded and not train:
        raise LorakitError(f"no training record keeps a trained token (cut by data.max_length={max_length}, or "
                           "every assistant turn train: false); raise data.max_length or train some turns")
    if len(train) < len(encoded):
        warnings.warn(f"{len(encoded) - len(train)} of {len(encoded)} training records have no trained token "
                      f"(cut by data.max_length={max_length}, or every assistant turn train: false) and are "
                      "skipped; raise data.max_length to keep the long ones", stacklevel=3)
    return train


def _encode_pairs(config: RunConfig, tokenizer: Any, split: Split) -> Examples:
    """Both answers of every pair, labelled on the answer alone (a conversation's last assistant turn)."""
    d = config.data

    def encode_side(sample: Any) -> Any:
        return encode_one(sample, tokenizer, d.template, d.max_length, "last_assistant")

    encoded = [encode_pair(pair, encode_side) for pair in split[0]]
    train = _kept(encoded, [answered(pair) for pair in encoded], d.max_length)
    lengths = [max(len(pair[side]["input_ids"]) for side in SIDES) for pair in train]
    evaluated = [encode_pair(pair, encode_side) for pair in split[1]]
    kept = [pair for pair in evaluated if answered(pair)]  # a cut-away answer would score m = 0
    if len(kept) < len(evaluated):
        warnings.warn(f"{len(evaluated) - len(kept)} of {len(evaluated)} evaluation pairs lose an answer to "
                      f"data.max_length={d.max_length} and are not scored; raise data.max_length", stacklevel=2)
    return Examples(train, kept, PairCollator(Collator(tokenizer)), skipped=len(encoded) - len(train),
                    lengths=lengths if d.group_by_length else None)


def check_packing(config: RunConfig) -> None:
    """Refuse ``data.packing`` and ``data.padding_free`` where they would not be exact."""
    from transformers import masking_utils

    if not hasattr(masking_utils, "find_packed_sequence_indices"):  # transformers before 4.54
        raise LorakitError("data.packing and data.padding_free need transformers >= 4.54 (its block-diagonal "
                           "attention from position ids); upgrade transformers or use data.group_by_length")
    if config.method_spec().schedule == "lora_drop":
        raise LorakitError("lora_drop measures layer importance with the attention mask, which packed and "
                           "padding-free rows do not have; use data.group_by_length with lora_drop")


def evaluate(config: RunConfig, model: nn.Module, tokenizer: Any, split: Split, out_dir: Path | None = None,
             examples: Examples | None = None, name: str = "eval split") -> dict[str, float]:
    """``config.eval``'s metrics of ``model`` on the eval split (generations written to ``out_dir``);
    ``examples``: the split already encoded (by a training run), else only the eval split is.
    For preference pairs the metrics are those of the chosen answers (the preference metrics
    need the adapter: ``lorakit.train.objectives.Dpo``). ``name``: the split's, for status lines."""
    examples = examples or encode(config, tokenizer, ([], split[1]), model_labels(model))
    records, encoded, collate = split[1], examples.eval, examples.collate
    if isinstance(collate, PairCollator):
        records, encoded, collate = [p["chosen"] for p in records], [p["chosen"] for p in encoded], collate.collate
    return evaluate_run(model, tokenizer, config, records, encoded, collate, out_dir, name)


def final_evaluation(config: RunConfig, model: nn.Module, tokenizer: Any, split: Split,
                     held_out: list[dict[str, Any]] | None, out_dir: Path | None = None,
                     examples: Examples | None = None) -> dict[str, float]:
    """``evaluate`` on the eval split and, given the ``held_out`` records (``load_held_out``), the
    same metrics on them as ``held_out_<metric>`` (their generations or predictions in ``held_out/``)."""
    metrics = evaluate(config, model, tokenizer, split, out_dir, examples)
    if held_out is None:
        return metrics
    folder = None if out_dir is None else out_dir / HELD_OUT
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    scores = evaluate(config, model, tokenizer, ([], held_out), folder, name="held-out set")
    return {**metrics, **{f"{HELD_OUT}_{name}": value for name, value in scores.items()}}


def reported_metrics(config: RunConfig) -> list[str]:
    """The final evaluation's metric names: ``eval.metrics``, their held-out versions, then the
    objective's own (DPO's preference metrics, GRPO's eval reward)."""
    from .train.objectives import objective_metrics

    names = list(config.eval.metrics)
    held_out = [f"{HELD_OUT}_{name}" for name in names] if config.data.held_out_path else []
    return names + held_out + list(objective_metrics(config.train.objective))


def load_base_and_adapter(config: RunConfig, adapter: str | Path | None, split: Split = ([], [])
                          ) -> tuple[nn.Module, Any]:
    """The config's base model with the adapter saved at ``adapter`` loaded onto it (none: the base
    alone), and the tokenizer; a bad adapter path, or a label of ``split`` outside the adapter's
    classes, fails before the model loads. A classifier's head has the adapter's classes (without an
    adapter, those of ``split``: ``labels_of``)."""
    if adapter is not None:
        labels = recorded_labels(read_adapter_config(adapter), adapter, config.task.type)
        if labels is not None:
            check_labels(labels, split)
            check_f1(config, labels)
    else:
        labels = labels_of(config, split)
    model, tokenizer = load_base(config, labels=labels)
    if adapter is not None:
        load(model, adapter)
    return model, tokenizer


def load_adapter_on_base(adapter: str | Path, model: str | None = None, dtype: str = "float32",
                         ) -> tuple[Adapter, Any]:
    """The adapter saved at ``adapter`` on its base model (``model``, or the one it records) and
    the tokenizer; a quantized-base adapter gets its base quantized as in training (its recorded
    type and load dtype; ``dtype`` is then not used)."""
    config = read_adapter_config(adapter)
    base = model or config.get("base_model")
    if not base:
        raise LorakitError(f"{adapter} does not record its base model; pass --model PATH")
    base = model_path(base)
    quantized = config.get("quantization") or {}  # the base quantized as in training, from the same dtype
    kind = {"nf4": "nf4", "int8": "int8"}.get(quantized.get("type"), "none")
    base_model, tokenizer = load_model(base, dtype=quantized.get("dtype") or dtype, quantize=kind,
                                       compute_dtype=quantized.get("compute_dtype"),
                                       labels=Labels.from_record(recorded_task(config)))
    return load(base_model, adapter), tokenizer


def recorded_labels(config: dict[str, Any], adapter: str | Path, task: str) -> Labels | None:
    """The classes an adapter's head was trained for (from its ``task`` record), refusing an
    adapter of another ``task.type`` than ``task``."""
    record = recorded_task(config)
    if record["type"] != task:
        raise LorakitError(f"{adapter} was trained for task.type {record['type']}, not {task}; set task.type: "
                           f"{record['type']}")
    return Labels.from_record(record)


def recorded_task(config: dict[str, Any]) -> dict[str, Any]:
    """An adapter config's ``task`` record (adapters from before classification: a causal LM)."""
    return config.get("task") or {"type": "causal_lm"}
