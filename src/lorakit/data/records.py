"""Records from files or built-ins: Alpaca (``instruction``, optional ``input``, ``output``),
conversations, prompt/completion pairs or plain text (see ``formats``).

Every reader returns raw rows, each with where it is in its file (``data.jsonl: line 5, record 3``:
the line in JSONL, CSV and TSV files, and the record's place counted from 0), which every error
message names; a CSV or TSV row must hold one value per header column, and the header must not
name a column twice. One parser per record format decides what a valid record is (for Alpaca
records ``_validate``), so the file types and the built-in data set fail with the same messages.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import LorakitError
from .arithmetic import BUILTIN_ARITHMETIC, arithmetic_records
from .conversation import Reading, check_object
from .formats import HINTS, PARSERS, check_format, detect_format

Record = dict[str, str]
FIELDS_HINT = HINTS["alpaca"]
BUILTIN_CHATTERBOT = ("chatterbot", "builtin:chatterbot")
# a raw row and where it is in its file: "data.json: record 3", "data.jsonl: line 5, record 3"
Located = tuple[str, Any]


def load_records(source: str, format: str = "auto", system_prompt: str | None = None,
                 roles: Mapping[str, str] | None = None, answered: bool = True,
                 loss_on: str = "assistant") -> list[dict[str, Any]]:
    """Records from a ``.json``/``.jsonl``/``.csv``/``.tsv``/``.parquet`` file, ``"chatterbot"``, or
    ``"arithmetic"`` (word problems with numeric answers, ``lorakit.data.arithmetic``).

    ``format``: one of ``formats.FORMATS`` (``auto``: the first record's). An Alpaca record has
    exactly the keys ``instruction``, ``input`` (``""`` when absent) and ``output``; a
    conversation ``messages``; the others ``prompt``/``completion`` or ``text``. Error messages
    name a record by its place in the file (counted from 0), after its line in JSONL, CSV and TSV.
    ``system_prompt`` and ``roles`` (more ShareGPT ``from`` names) apply to conversations;
    ``answered=False`` accepts conversations without an assistant turn (prompts to answer, for
    ``lorakit generate``); ``loss_on`` (``data.loss_on``) names the assistant turns that are learned.
    """
    check_format(format)
    reading = Reading(system_prompt, roles, answered, loss_on)
    if source in BUILTIN_ARITHMETIC:
        return [_parse(row, f"{source}: record {index}", "messages", reading)
                for index, row in enumerate(arithmetic_records())]
    if source in BUILTIN_CHATTERBOT:
        if format not in ("messages", "sharegpt"):
            return chatterbot_records()
        return [_parse(row, f"{source}: record {index}", "messages", reading)
                for index, row in enumerate(chatterbot_conversations())]
    rows = read_rows(source, FIELDS_HINT)
    if format == "auto":  # a first record of no known format is read as Alpaca, with Alpaca's errors
        format = _detected(rows[0][1], source) or "alpaca"
    return [_parse(row, where, format, reading) for where, row in rows]


def prompt_lines(source: str) -> list[dict[str, Any]]:
    """The prompts of a ``.txt`` file for ``lorakit generate``: every non-empty line an instruction
    (rendered with the run's template, as an Alpaca record without an answer)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise LorakitError(f"prompt file {source} does not exist; pass a .txt file of one prompt per line, or a "
                           f"{'/'.join(READERS)} file of records")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError:
        raise LorakitError(f"{source}: not UTF-8 text; save the file as UTF-8") from None
    prompts = [{"instruction": line, "input": ""} for line in lines if line]
    if not prompts:
        raise LorakitError(f"{source}: the file holds no prompts; write one prompt per line")
    return prompts


def read_rows(source: str, hint: str) -> list[Located]:
    """The raw rows of the data file ``source`` (one of ``READERS``' suffixes), each with where it is
    in the file; a missing, empty or unreadable file is a one-line error ending with ``hint`` (what a
    record needs)."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise LorakitError(f"data file {source} is a folder; pass a {'/'.join(READERS)} file")
    if not path.is_file():
        raise LorakitError(
            f"data file {source} does not exist; pass an existing {'/'.join(READERS)} file "
            f"or a built-in data set ('chatterbot', 'arithmetic')"
        )
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise LorakitError(
            f"{source}: unsupported data format {suffix or '(no extension)'!r}; "
            f"use one of: {', '.join(READERS)}"
        )
    try:
        rows = READERS[suffix](path, source)
    except UnicodeDecodeError:
        raise LorakitError(f"{source}: not UTF-8 text; save the file as UTF-8") from None
    if not rows:
        raise LorakitError(f"{source}: the file holds no records; {hint}")
    return [(_where(source, index, line), row) for index, (line, row) in enumerate(rows)]


def _where(source: str, index: int, line: int | None) -> str:
    """How error messages name record ``index`` of ``source`` (and its first line, where known)."""
    return f"{source}: record {index}" if line is None else f"{source}: line {line}, record {index}"


def _detected(row: Any, source: str) -> str | None:
    try:
        return detect_format(row, source)
    except LorakitError:
        return None


def _parse(row: Any, where: str, format: str, reading: Reading) -> dict[str, Any]:
    """One record in ``format``; a record of another format is a one-line error naming both."""
    try:
        if format == "alpaca":
            return _validate(row, where, reading.answered)
        return PARSERS[format](row, where, reading)
    except LorakitError:
        other = _detected(row, where)
        if other is not None and other != format and not (format == "messages" and other == "sharegpt"):
            raise LorakitError(f"{where} is in format {other!r} but the file is read as {format!r}; one file holds "
                               "one format (set data.format to choose)") from None
        raise


def split_records(records: Sequence[Record], train_size: int | None, eval_size: int,
                  offset: int = 0, shuffle_seed: int | None = None) -> tuple[list[Record], list[Record]]:
    """Deterministic (train, eval) split: train is ``records[offset:offset+train_size]``,
    eval the ``eval_size`` records right after it.

    ``train_size=None`` trains on everything after ``offset`` except the eval part. With
    ``shuffle_seed`` the records are permuted by ``random.Random(shuffle_seed)`` first.
    The paper's split is ``train_size=1000, eval_size=500`` (rows 0-999 and 1000-1499).
    """
    if (train_size is not None and train_size < 0) or eval_size < 0 or offset < 0:
        raise LorakitError(
            f"split sizes must be >= 0 (got train_size={train_size}, eval_size={eval_size}, "
            f"offset={offset}); pass non-negative numbers"
        )
    rows = list(records)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    train_end = max(offset, len(rows) - eval_size) if train_size is None else offset + train_size
    train, evaluation = rows[offset:train_end], rows[train_end:train_end + eval_size]
    empty = "train" if not train else "eval" if eval_size > 0 and not evaluation else None
    if empty is not None:
        raise LorakitError(
            f"the {empty} split is empty: there are {len(rows)} records but the split asks for "
            f"offset={offset}, train_size={train_size}, eval_size={eval_size}; use smaller sizes or more data "
            f"(e.g. data.train_size=null data.eval_size={max(1, (len(rows) - offset) // 5)}: the last fifth evaluates)"
        )
    return train, evaluation


def chatterbot_conversations() -> list[dict[str, Any]]:
    """The English ``chatterbot_corpus`` conversations as multi-turn dialogues (user and assistant
    alternating, starting with the user); one-line conversations and those with a blank line are
    left out."""
    dialogues = []
    for texts in _chatterbot_texts():
        if len(texts) >= 2 and all(text.strip() for text in texts):
            roles = ("user", "assistant")
            dialogues.append({"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]})
    return dialogues


def _chatterbot_texts() -> list[list[str]]:
    """Each conversation of the English corpus as its text lines."""
    return [texts for _, conversations in chatterbot_files() for texts in conversations]


def chatterbot_files() -> list[tuple[str, list[list[str]]]]:
    """Every file of the English corpus as ``(category, conversations)``: the file's first category
    and each conversation's text lines."""
    import yaml

    try:
        from chatterbot_corpus.corpus import DATA_DIRECTORY
    except ImportError:
        raise LorakitError(
            "the built-in 'chatterbot' data set needs chatterbot-corpus; pip install chatterbot-corpus"
        ) from None
    found = []
    for file in sorted(glob.glob(os.path.join(DATA_DIRECTORY, "english", "*.yml"))):
        with open(file, encoding="utf-8") as handle:
            content = yaml.safe_load(handle) or {}
        categories = content.get("categories") or [Path(file).stem]
        # YAML may turn a bare answer like "yes" or "42" into a bool or number: not text, skip it
        conversations = [[turn for turn in turns if isinstance(turn, str)]
                         for turns in content.get("conversations") or []]
        found.append((str(categories[0]), conversations))
    return found


def chatterbot_records() -> list[Record]:
    """The English ``chatterbot_corpus`` conversations as (question → answer) records."""
    return [{"instruction": question, "input": "", "output": answer}
            for texts in _chatterbot_texts() for question, answer in zip(texts, texts[1:])]


# -- readers: path → raw rows (anything; the parsers check them), each with its first line (None: unknown) ----
Numbered = tuple[int | None, Any]


def _read_json(path: Path, source: str) -> list[Numbered]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LorakitError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}; "
                           f"fix the file (it must be a JSON list of objects)") from None
    if not isinstance(data, list):
        raise LorakitError(f"{source}: top-level JSON is a {type(data).__name__}, not a list; "
                           f"write a JSON list of record objects (or use .jsonl)")
    return [(None, row) for row in data]


def _read_jsonl(path: Path, source: str) -> list[Numbered]:
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise LorakitError(f"{source}: invalid JSON on line {line_number}: {exc.msg}; "
                                   f"each line must be one JSON object") from None
    return rows


def _read_csv(path: Path, source: str) -> list[Numbered]:
    fix = "quote a field that holds a comma, and give every row one value per column"
    return _read_table(path, source, fix, delimiter=",")


def _read_tsv(path: Path, source: str) -> list[Numbered]:
    """Tab-separated columns, read without quote processing: GLUE's files hold unbalanced quotes."""
    fix = "a tab inside a value splits it (the file is read without quoting): remove it, and give every row one " \
          "value per column"
    return _read_table(path, source, fix, delimiter="\t", quoting=csv.QUOTE_NONE)


def _read_table(path: Path, source: str, fix: str, **dialect: Any) -> list[Numbered]:
    """The rows of a CSV or TSV file as objects keyed by the header's column names; a row with more or
    fewer values than the header has columns is an error naming its line and ending with ``fix``."""
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: a byte-order mark is not a column name
        rows = _numbered_rows(csv.reader(handle, **dialect))
        header_line, header = next(rows, (1, None))
        if header is None:
            return []
        _check_header(header, header_line, source)
        return [(line, _by_column(header, values, _where(source, index, line), fix))
                for index, (line, values) in enumerate(rows)]


def _numbered_rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows of a ``csv.reader``, each with the line it starts on (a quoted value may span lines)."""
    start = 1
    for values in reader:
        if values:
            yield start, values
        start = reader.line_num + 1


def _check_header(header: list[str], line: int, source: str) -> None:
    """Refuse a header that names a column twice (only the last would be read)."""
    for position, name in enumerate(header):
        if name in header[:position]:
            raise LorakitError(f"{source}: the header (line {line}) names the column {name!r} twice (columns "
                               f"{header.index(name) + 1} and {position + 1}); rename or remove one")


def _by_column(header: list[str], values: list[str], where: str, fix: str) -> dict[str, str]:
    """One row's values keyed by the header's column names; every column needs exactly one value."""
    if len(values) != len(header):
        raise LorakitError(f"{where} has {_count(len(values), 'value')} but the header has "
                           f"{_count(len(header), 'column')} ({', '.join(header)}); {fix}")
    return dict(zip(header, values))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _read_parquet(path: Path, source: str) -> list[Numbered]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LorakitError(f"{source}: reading .parquet needs pyarrow; pip install pyarrow") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own exception types for corrupt files
        raise LorakitError(f"{source}: not a readable parquet file ({exc}); fix or re-export it") from None
    return [(None, row) for row in rows]


READERS: dict[str, Callable[[Path, str], list[Numbered]]] = {
    ".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".tsv": _read_tsv, ".parquet": _read_parquet,
}


def _missing(value: Any) -> bool:
    # parquet/pandas exports give None or NaN for empty cells
    return value is None or (isinstance(value, float) and math.isnan(value))


def _validate(row: Any, where: str, answered: bool = True) -> Record:
    """An Alpaca record: ``instruction``, ``input`` (``""`` when absent or empty) and ``output``, all
    strings (``answered=False``: ``output`` may be absent, for generation)."""
    row = check_object(row, where, FIELDS_HINT)
    record = {}
    for field in ("instruction", "input", "output"):
        value = row.get(field)
        if field == "output" and not answered and _missing(value):
            continue
        if field == "input" and _missing(value):
            value = ""
        elif field not in row:
            raise LorakitError(f"{where} has no {field!r} field; {FIELDS_HINT}")
        elif _missing(value) or (field != "input" and isinstance(value, str) and not value.strip()):
            raise LorakitError(f"{where} has an empty {field!r} field; {FIELDS_HINT}")
        if not isinstance(value, str):
            raise LorakitError(f"{where} field {field!r} is a {type(value).__name__}, not a string; {FIELDS_HINT}, "
                               "all strings")
        record[field] = value
    return record
