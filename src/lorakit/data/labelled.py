"""Labelled texts for sequence classification and regression (``task.type``).

A record is ``{"text": str, "text_pair": str, "label": ...}`` (``text_pair`` for sentence pairs
only), read from the columns ``data.text_column``, ``data.text_pair_column`` and
``data.label_column`` of a CSV, TSV, JSON, JSONL or Parquet file; or the built-in ``chatterbot``
topic classification: the first question of every chatterbot-corpus conversation, labelled with
its file's category (questions asked under two categories and categories with fewer than
``MIN_TOPIC_QUESTIONS`` questions left out), in a fixed shuffled order.

``Labels`` maps the data's labels to class ids: class names (``task.labels``), or integers
``0..n-1``, or — when neither is given — the sorted distinct string labels of the training and
evaluation records; a regression label is one number.

A classification label is a class id (a whole number) or a class name (a string). A missing or
non-scalar value — null, NaN, a boolean, a list or an object, or what a CSV/TSV cell holds for one:
empty, ``nan``, ``null``, ``[1]`` — is never a label; such a record is refused where its file is
read, named by its place in the file, as is a label outside ``task.labels`` or, for regression, one
that is not a finite number. Classes that ``task.labels`` / ``task.num_labels`` do not declare come
from the training and evaluation records, so these need 2 distinct labels (integers too: all labels
``1`` would make a class 0 with no example), and integer labels that skip a class id train a class
without an example, which is warned about. Declared classes may lack examples (a small eval split)
without a warning.

The model sees ``input_ids`` (one sequence, or the pair joined by the tokenizer's own separators),
cut to ``data.max_length`` tokens.
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import LorakitError
from .conversation import check_object
from .records import BUILTIN_CHATTERBOT, chatterbot_files, read_rows

# column pairs (text, text pair) tried in order when data.text_column is null: GLUE's and common names
AUTO_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("text", None), ("sentence", None))
MIN_TOPIC_QUESTIONS = 10
HINT = "a classification record needs a text column and a label column (data.text_column, data.label_column)"


class LabelledRecord(dict):
    """A labelled record — ``text``, ``text_pair`` (sentence pairs only), ``label`` — that keeps
    ``where`` it is in its file, so that a label refused after shuffling and splitting is named by
    its place in the file."""

    def __init__(self, fields: dict[str, Any], where: str) -> None:
        super().__init__(fields)
        self.where = where


def located(record: Any, fallback: str) -> str:
    """Where ``record`` is in its file; ``fallback`` for a record of no file (built-in or made in code)."""
    return getattr(record, "where", fallback)


@dataclass(frozen=True)
class Labels:
    """The classes of a task: ``names`` in class order, or ``None`` for regression (one number)."""

    names: tuple[str, ...] | None

    @property
    def regression(self) -> bool:
        return self.names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.names is None else len(self.names)

    def id(self, value: Any, where: str) -> int | float:
        """The class id (or the regression target) of the label ``value``."""
        if isinstance(value, bool) or value is None or value == "":
            raise LorakitError(f"{where} has no usable label ({value!r}); {HINT}")
        if self.names is None:
            number = _number(value)
            if number is None or not math.isfinite(number):
                raise LorakitError(f"{where} has the label {value!r}, not a finite number; regression labels are "
                                   "numbers")
            return number
        name = _name(value)
        if name in self.names:  # a name, also when JSON gives the name "1" as the number 1 (or 1.0)
            return self.names.index(name)
        index = _integer(value)
        if index is None or not 0 <= index < len(self.names):
            raise LorakitError(f"{where} has the label {value!r}, which is not one of the {len(self.names)} classes "
                               f"({_listed(self.names)}); list every class in task.labels, or set task.num_labels")
        return index

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Labels | None:
        """The labels of an adapter's ``task`` record (``None``: a causal LM)."""
        if record["type"] == "causal_lm":
            return None
        return cls(tuple(record["labels"]) if record["type"] == "classification" else None)

    @classmethod
    def of(cls, task_type: str, values: Sequence[Any], names: Sequence[str] = (),
           num_labels: int | None = None) -> Labels:
        """The labels of a task: from ``names`` (``task.labels``) when given, else from the data's
        labels ``values`` (integers: ``0..max``, or ``num_labels`` classes; strings: sorted). Classes
        the task does not declare come from the data, so it must hold 2 distinct labels, and class
        ids it skips are warned about (see the module docstring)."""
        if task_type == "regression":
            return cls(None)
        labels = cls._classes(values, names, num_labels)
        declared = bool(names) or num_labels is not None
        seen = {_name(value) for value in values}
        shown = labels.names if declared else tuple(name for name in labels.names if name in seen)
        if len(shown) < 2:
            raise LorakitError(f"classification needs at least 2 classes, the {'task' if declared else 'data'} has "
                               f"{len(shown)} ({_listed(shown)}); list them in task.labels, or use task.type "
                               "regression")
        if not declared and len(shown) < len(labels.names):
            unseen = tuple(name for name in labels.names if name not in seen)
            warnings.warn(f"the labels are class ids up to {labels.names[-1]}, but no record has class "
                          f"{_listed(unseen)}: the classifier gets {labels.num_labels} classes, {len(unseen)} without "
                          f"an example; number the classes 0..{len(shown) - 1}, or declare them in task.num_labels "
                          "(or task.labels)", stacklevel=3)
        return labels

    @classmethod
    def _classes(cls, values: Sequence[Any], names: Sequence[str], num_labels: int | None) -> Labels:
        if names:
            if num_labels is not None and num_labels != len(names):
                raise LorakitError(f"task.labels names {len(names)} classes but task.num_labels is {num_labels}; "
                                   "give one of them, or make them agree")
            return cls(tuple(names))
        if not values:
            if num_labels is None:
                raise LorakitError("no labelled records to learn the classes from; set task.labels (or "
                                   "task.num_labels)")
            return cls(tuple(str(i) for i in range(num_labels)))
        integers = [_integer(value) for value in values]
        if all(i is not None and i >= 0 for i in integers):
            count = num_labels or max(integers) + 1
            if count < max(integers) + 1:
                raise LorakitError(f"task.num_labels is {num_labels} but the data has the label {max(integers)}; "
                                   f"raise task.num_labels to {max(integers) + 1} or more")
            return cls(tuple(str(i) for i in range(count)))
        distinct = tuple(sorted({_name(value) for value in values}))
        if num_labels is not None and num_labels != len(distinct):
            raise LorakitError(f"the labels are {len(distinct)} distinct strings but task.num_labels is "
                               f"{num_labels}; list the classes in task.labels")
        return cls(distinct)


def check_labels(labels: Labels, split: Sequence[Sequence[Any]]) -> None:
    """Refuse a record of ``split`` (training, eval records) whose label is not one of ``labels``'
    classes, named by its place in its file."""
    for name, records in zip(("training record", "eval record"), split):
        for index, record in enumerate(records):
            labels.id(record["label"], located(record, f"{name} {index}"))


def _listed(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _integer(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):  # ASCII digits: "²" or "--3" are names
        return int(value)
    return None


def _name(value: Any) -> str:
    """The class name of a label: a string as written, a whole number (JSON's ``1`` or ``1.0``) as ``"1"``."""
    index = None if isinstance(value, str) else _integer(value)
    return str(value) if index is None else str(index)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_labelled(source: str, text_column: str | None = None, pair_column: str | None = None,
                  label_column: str = "label", task_type: str | None = None,
                  names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Labelled records from a data file's columns, or the built-in ``chatterbot`` topics; every
    label is checked here, named by its place in the file: a usable value, a whole number or a
    name for ``classification``, a finite number for ``regression``, one of ``names``
    (``task.labels``) when given."""
    if source in BUILTIN_CHATTERBOT:
        return chatterbot_topics()
    rows = read_rows(source, HINT)
    text, pair = _columns(rows[0], text_column, pair_column, label_column, source)
    column = Column(label_column, task_type, Labels(None) if task_type == "regression" else
                    Labels(tuple(names)) if names else None)
    return [_record(row, where, text, pair, column) for where, row in rows]


@dataclass(frozen=True)
class Column:
    """The label column of a file: its ``name``, the ``task_type`` and the classes ``known`` before the
    data is read (``task.labels``, or regression's ``Labels(None)``)."""

    name: str
    task_type: str | None
    known: Labels | None


def _columns(first: tuple[str, Any], text: str | None, pair: str | None, label: str,
             source: str) -> tuple[str, str | None]:
    """The text and text-pair columns: as configured, or the first of ``AUTO_COLUMNS`` present."""
    row = check_object(first[1], first[0], HINT)
    columns = ", ".join(map(str, row)) or "none"
    if label not in row:
        raise LorakitError(f"{source} has no label column {label!r} (its columns: {columns}); set data.label_column")
    if text is None:
        found = next(((t, p) for t, p in AUTO_COLUMNS if t in row and (p is None or p in row)), None)
        if found is None:
            raise LorakitError(f"{source}: no text column found among {columns}; set data.text_column (and "
                               "data.text_pair_column for sentence pairs)")
        text, pair = found[0], pair or found[1]
    for name in (text, pair):
        if name is not None and name not in row:
            raise LorakitError(f"{source} has no column {name!r} (its columns: {columns}); set data.text_column / "
                               "data.text_pair_column")
    return text, pair


def _record(row: Any, where: str, text: str, pair: str | None, column: Column) -> LabelledRecord:
    row = check_object(row, where, HINT)
    record = {"text": _text(row.get(text), where, text)}
    if pair is not None:
        record["text_pair"] = _text(row.get(pair), where, pair)
    record["label"] = _label(row.get(column.name), where, column)
    return LabelledRecord(record, where)


def _label(value: Any, where: str, column: Column) -> Any:
    """``value`` if it can be the label of the record at ``where`` (see ``load_labelled``)."""
    if _no_label(value):
        raise LorakitError(f"{where} has no usable {column.name!r} value ({_shown(value)}); every record needs a "
                           "class name, a class id or a number")
    if column.task_type == "classification" and isinstance(value, float) and not value.is_integer():
        raise LorakitError(f"{where} has the label {value!r}, neither a class id (a whole number) nor a class name "
                           "(a string); use class ids or names, or task.type regression for numbers")
    if column.known is not None:
        column.known.id(value, where)
    return value


def _no_label(value: Any) -> bool:
    """Whether ``value`` stands for a missing or non-scalar label: null, a boolean, a non-finite number,
    a list or object, or text that is blank, a NaN or infinity, ``null``, or a ``[list]`` or
    ``{object}`` written out (as CSV exports of such values read)."""
    if isinstance(value, str):
        text = value.strip()
        return not text or text.lower() == "null" or text[0] + text[-1] in ("[]", "{}") or _non_finite(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return not math.isfinite(value)


def _shown(value: Any) -> str:
    """A label as its file wrote it: text quoted, anything else in JSON (``null``, ``NaN``, ``[1]``)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)  # shown, not written
    except (TypeError, ValueError):
        return repr(value)


def _non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LorakitError(f"{where} has {'no' if value is None else 'an empty or non-text'} {column!r} value; "
                           "every record needs its text")
    return value


def chatterbot_topics() -> list[dict[str, Any]]:
    """The built-in topic classification (see the module docstring)."""
    labels: dict[str, set[str]] = {}
    for category, conversations in chatterbot_files():
        for texts in conversations:
            if texts and texts[0].strip():
                labels.setdefault(texts[0].strip(), set()).add(category)
    questions = {q: next(iter(c)) for q, c in labels.items() if len(c) == 1}
    counts: dict[str, int] = {}
    for category in questions.values():
        counts[category] = counts.get(category, 0) + 1
    records = [{"text": q, "label": c} for q, c in questions.items() if counts[c] >= MIN_TOPIC_QUESTIONS]
    random.Random(0).shuffle(records)  # the files come one category after another
    return records


def encode_labelled(records: Sequence[dict[str, Any]], tokenizer: Any, labels: Labels, max_length: int,
                    where: str = "record") -> list[dict[str, Any]]:
    """Every record as the tokenizer's inputs (cut to ``max_length``) and ``labels`` (its class id)."""
    encoded = []
    for index, record in enumerate(records):
        inputs = tokenizer(record["text"], record.get("text_pair"), truncation=True, max_length=max_length)
        encoded.append({**inputs, "labels": labels.id(record.get("label"), located(record, f"{where} {index}"))})
    return encoded


class LabelledCollator:
    """Pads a list of encoded records (``transformers.DataCollatorWithPadding``) into tensors:
    the tokenizer's inputs and ``labels`` (int64 class ids, or float32 regression targets)."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise LorakitError("cannot collate an empty batch; pass at least one encoded record")
        out = dict(self.pad([dict(item) for item in batch]))
        if out["labels"].is_floating_point():
            out["labels"] = out["labels"].float()
        return out
