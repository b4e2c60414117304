"""lorakit.data: loading, validating, splitting, prompting, encoding and collating records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lorakit.data import (
    IGNORE_INDEX,
    TEMPLATES,
    Collator,
    encode,
    encode_all,
    format_prompt,
    load_records,
    split_records,
)
from lorakit.errors import LorakitError

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi, politely", "input": "", "output": "Hello, \"friend\"\nHow are you?"},
]
CHAT_TEMPLATE = ("{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained here on a few strings: offline, tiny and fast."""
    corpus = [format_prompt(r, "alpaca") + r["output"] for r in RECORDS] + ["the cat sat on a mat"]
    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
    model.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


# -- loading ----------------------------------------------------------------------------------
def write(path: Path, records: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
            writer.writeheader()
            writer.writerows(records)
    elif suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_format_loads_the_same_records(tmp_path, suffix):
    assert load_records(str(write(tmp_path / f"data{suffix}", RECORDS))) == RECORDS


def test_missing_or_null_input_becomes_empty(tmp_path):
    jsonl = tmp_path / "d.jsonl"  # Python's json accepts NaN, as pandas exports produce
    jsonl.write_text('{"instruction": "a", "output": "b"}\n\n'
                     '{"instruction": "c", "input": null, "output": "d"}\n'
                     '{"instruction": "e", "input": NaN, "output": "f"}\n')
    assert [r["input"] for r in load_records(str(jsonl))] == ["", "", ""]
    pytest.importorskip("pyarrow")
    rows = [{"instruction": "a", "input": None, "output": "b"}]
    assert load_records(str(write(tmp_path / "d.parquet", rows)))[0]["input"] == ""


def test_extra_fields_are_dropped(tmp_path):
    path = write(tmp_path / "d.json", [{**RECORDS[0], "id": 7}])
    assert load_records(str(path)) == [RECORDS[0]]


@pytest.mark.parametrize("name", ["chatterbot", "builtin:chatterbot"])
def test_chatterbot_builtin(name):
    records = load_records(name)
    assert len(records) > 500
    assert records == load_records("chatterbot")  # deterministic order
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    assert all(isinstance(v, str) for r in records for v in r.values())
    assert all(r["input"] == "" for r in records)
    assert {"instruction": "What is AI?", "input": "",
            "output": records[0]["output"]} in records


def error(source) -> str:
    with pytest.raises(LorakitError) as info:
        load_records(str(source))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file_and_unknown_extension(tmp_path):
    assert str(tmp_path / "nope.json") in error(tmp_path / "nope.json")
    (tmp_path / "d.txt").write_text("x")
    message = error(tmp_path / "d.txt")
    assert ".txt" in message and ".jsonl" in message and ".parquet" in message


def test_malformed_json_names_file_and_line(tmp_path):
    (tmp_path / "d.json").write_text('[\n{"instruction": "a",\n "output": }\n]')
    message = error(tmp_path / "d.json")
    assert "d.json" in message and "line 3" in message
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    message = error(tmp_path / "d.jsonl")
    assert "d.jsonl" in message and "line 2" in message
    (tmp_path / "o.json").write_text('{"instruction": "a", "output": "b"}')
    assert "not a list" in error(tmp_path / "o.json")


def test_record_that_is_not_an_object(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n["a", "b"]\n')
    assert "record 1 is a list" in error(tmp_path / "d.jsonl")


@pytest.mark.parametrize("field", ["instruction", "output"])
def test_missing_field_names_record_and_field(tmp_path, field):
    records = [dict(RECORDS[0]) for _ in range(20)]
    del records[17][field]
    message = error(write(tmp_path / "data.json", records))
    assert message.startswith(str(tmp_path / "data.json"))
    assert f"record 17 has no '{field}' field" in message
    assert "every record needs 'instruction' and 'output'" in message


@pytest.mark.parametrize("field,value", [("output", 5), ("instruction", ["x"]), ("input", True),
                                         ("output", None)])
def test_bad_value_names_record_and_field(tmp_path, field, value):
    records = [dict(RECORDS[0]) for _ in range(4)]
    records[3][field] = value
    message = error(write(tmp_path / "data.jsonl", records))
    assert "data.jsonl" in message and "record 3" in message and f"'{field}'" in message


@pytest.mark.parametrize("field", ["instruction", "output"])
def test_blank_text_is_an_empty_field(tmp_path, field):
    records = [dict(RECORDS[0]) for _ in range(3)]
    records[2][field] = "  \n "
    assert f"record 2 has an empty '{field}' field" in error(write(tmp_path / "d.json", records))


def test_byte_order_marks_and_other_encodings(tmp_path):
    (tmp_path / "bom.csv").write_bytes("instruction,input,output\na,,b\n".encode("utf-8-sig"))
    assert load_records(str(tmp_path / "bom.csv")) == [{"instruction": "a", "input": "", "output": "b"}]
    (tmp_path / "u16.json").write_bytes(json.dumps([RECORDS[0]]).encode("utf-16"))
    assert "not UTF-8 text" in error(tmp_path / "u16.json")
    (tmp_path / "dir.json").mkdir()
    assert "is a folder" in error(tmp_path / "dir.json")


def test_short_csv_row(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,input,output\na,,b\nc\n")
    message = error(tmp_path / "d.csv")  # a short row is refused as such, not read with a missing 'output'
    assert "line 3, record 1 has 1 value but the header has 3 columns (instruction, input, output)" in message


@pytest.mark.parametrize("name,text", [("d.json", ""), ("e.json", "[]"), ("d.jsonl", "\n\n"),
                                       ("d.csv", "instruction,input,output\n")])
def test_empty_file(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert "no records" in error(tmp_path / name)


# -- splitting --------------------------------------------------------------------------------
def synthetic(n: int) -> list[dict[str, str]]:
    return [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(n)]


def test_paper_split_is_first_1000_then_500():
    records = synthetic(1700)
    train, evaluation = split_records(records, train_size=1000, eval_size=500)
    assert train == records[:1000] and evaluation == records[1000:1500]


def test_split_options():
    records = synthetic(50)
    train, evaluation = split_records(records, train_size=10, eval_size=5, offset=20)
    assert train == records[20:30] and evaluation == records[30:35]
    train, evaluation = split_records(records, train_size=None, eval_size=5, offset=3)
    assert train == records[3:45] and evaluation == records[45:]
    train, evaluation = split_records(records, train_size=45, eval_size=10)  # takes what exists
    assert len(train) == 45 and evaluation == records[45:]
    assert split_records(records, train_size=None, eval_size=0)[1] == []


def test_shuffled_split_is_deterministic():
    records = synthetic(100)
    first = split_records(records, 30, 10, shuffle_seed=1)
    assert first == split_records(records, 30, 10, shuffle_seed=1)
    assert first != split_records(records, 30, 10, shuffle_seed=2)
    assert first[0] != records[:30]
    assert not {r["instruction"] for r in first[0]} & {r["instruction"] for r in first[1]}
    assert records == synthetic(100)  # the caller's list is left alone


@pytest.mark.parametrize("kwargs,empty", [(dict(train_size=0, eval_size=5), "train"),
                                          (dict(train_size=10, eval_size=5, offset=20), "train"),
                                          (dict(train_size=20, eval_size=5), "eval"),
                                          (dict(train_size=None, eval_size=20), "train")])
def test_empty_split_errors(kwargs, empty):
    with pytest.raises(LorakitError, match=f"the {empty} split is empty: there are 20 records"):
        split_records(synthetic(20), **kwargs)


def test_negative_sizes_error():
    with pytest.raises(LorakitError, match=">= 0"):
        split_records(synthetic(20), train_size=5, eval_size=-1)


# -- prompts ----------------------------------------------------------------------------------
def test_alpaca_prompts():
    plain, with_input = format_prompt(RECORDS[0], "alpaca"), format_prompt(RECORDS[1], "alpaca")
    assert plain.startswith("Below is an instruction that describes a task. Write a response")
    assert "### Instruction:\nName a colour.\n\n### Response:\n" in plain
    assert "### Input:" not in plain
    assert "paired with an input" in with_input
    assert with_input.endswith("### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert TEMPLATES == ("alpaca", "chat")


def test_chat_prompt_uses_the_tokenizer_template(tokenizer):
    assert format_prompt(RECORDS[1], "chat", tokenizer) == "<|user|> Add the numbers.\n\n2 and 3 <|assistant|> "
    assert format_prompt(RECORDS[0], "chat", tokenizer) == "<|user|> Name a colour. <|assistant|> "


def test_prompt_template_errors(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    with pytest.raises(LorakitError, match="use template 'alpaca'"):
        format_prompt(RECORDS[0], "chat", bare)
    with pytest.raises(LorakitError, match="use template 'alpaca'"):
        format_prompt(RECORDS[0], "chat")
    with pytest.raises(LorakitError, match="did you mean 'alpaca'"):
        format_prompt(RECORDS[0], "alpacca")


# -- encoding and collating -------------------------------------------------------------------
@pytest.mark.parametrize("template", TEMPLATES)
def test_loss_only_on_response_and_eos(tokenizer, template):
    record = RECORDS[1]
    encoded = encode(record, tokenizer, template, max_length=512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    prompt = tokenizer(format_prompt(record, template, tokenizer), add_special_tokens=False)["input_ids"]
    response = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if template == "alpaca" else []
    assert ids == bos + prompt + response + [tokenizer.eos_token_id]
    n_prompt = len(bos) + len(prompt)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and len(labels) == len(ids)
    assert tokenizer.unk_token_id not in ids[n_prompt:]


def test_truncation_keeps_the_left(tokenizer):
    full = encode(RECORDS[2], tokenizer, "alpaca", max_length=512)
    cut = encode(RECORDS[2], tokenizer, "alpaca", max_length=len(full["input_ids"]) - 2)
    assert cut["input_ids"] == full["input_ids"][:-2] and cut["labels"] == full["labels"][:-2]
    assert encode(RECORDS[2], tokenizer, "alpaca", max_length=4)["labels"] == [IGNORE_INDEX] * 4
    with pytest.raises(LorakitError, match="max_length"):
        encode(RECORDS[2], tokenizer, "alpaca", max_length=0)


def test_encode_all(tokenizer):
    assert encode_all(RECORDS, tokenizer, "chat", 64) == [encode(r, tokenizer, "chat", 64) for r in RECORDS]


def test_collator_pads_right(tokenizer):
    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = Collator(tokenizer)(batch)
    pad = tokenizer.pad_token_id
    assert all(t.dtype == torch.long for t in out.values())
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_collator_falls_back_to_eos(tokenizer):
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    eos = no_pad.eos_token_id
    out = Collator(no_pad)([{"input_ids": [5, eos], "labels": [5, eos]}, {"input_ids": [9], "labels": [9]}])
    assert out["input_ids"].tolist() == [[5, eos], [9, eos]]
    assert out["attention_mask"].tolist() == [[1, 1], [1, 0]]  # the real eos stays visible
    assert out["labels"].tolist() == [[5, eos], [9, -100]]
