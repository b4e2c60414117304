"""Bad data files: every one is a one-line ``LorakitError`` that names the file and the record's place
in it (and, for JSONL, CSV and TSV, its line), raised where the file is read: before shuffling,
splitting or loading any model. Through the CLI: exit code 2 and one ``lorakit: error:`` line."""

from __future__ import annotations

import json
import warnings

import pytest

from lorakit.cli import main
from lorakit.data import load_records, split_records
from lorakit.data.formats import HINTS
from lorakit.data.labelled import Labels, check_labels, load_labelled
from lorakit.errors import LorakitError

USER, ASSISTANT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
VALID = {"alpaca": {"instruction": "a", "output": "b"}, "messages": {"messages": [USER, ASSISTANT]},
         "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
         "text": {"text": "t"}, "prompt_completion": {"prompt": "p", "completion": "c"},
         "preference": {"prompt": "p", "chosen": "a", "rejected": "b"}}
NOT_OBJECTS = [([1, 2, 3], "a list"), ("str", "a string"), (None, "null"), (42, "a number")]
STARTS_WITH_ASSISTANT = ("starts with an assistant turn; a conversation starts with a system or user message (the "
                         "turns before an assistant turn are its prompt): add one, set data.system_prompt, or mark "
                         "that turn train: false")
NO_LABEL = "every record needs a class name, a class id or a number"
TAB_FIX = ("a tab inside a value splits it (the file is read without quoting): remove it, and give every row one "
           "value per column")


def error(load, *args, **kwargs) -> str:
    """The message of the ``LorakitError`` that ``load(*args, **kwargs)`` raises (one line)."""
    with pytest.raises(LorakitError) as info:
        load(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def jsonl(path, *rows) -> str:
    """``rows`` as a JSONL file with a blank line after the first: the second row is on line 3."""
    lines = [json.dumps(row) for row in rows]
    path.write_text("\n\n".join(lines[:2]) + "".join("\n" + line for line in lines[2:]) + "\n")
    return str(path)


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is loaded: bad data must be refused before."""
    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad data was refused")

    monkeypatch.setattr("lorakit.loading.load_model", load_model)


def cli_error(capsys, *args: str) -> str:
    """The one-line error of a CLI command that must exit with code 2 (no traceback)."""
    capsys.readouterr()
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorakit: error: ") and "Traceback" not in captured.err, lines
    return lines[0][len("lorakit: error: "):]


def train_error(capsys, tmp_path, *overrides: str) -> str:
    """The error of ``lorakit train`` on a lora config with ``overrides``."""
    config = tmp_path / "c.yaml"
    config.write_text("method: lora\n")
    return cli_error(capsys, "train", "--quiet", str(config), f"train.output_dir={tmp_path / 'run'}",
                     "train.report_to=none", *overrides)


# -- 1. records that are not objects ---------------------------------------------------------------
@pytest.mark.parametrize("value,kind", NOT_OBJECTS)
@pytest.mark.parametrize("format", list(VALID))
def test_a_record_that_is_not_an_object_is_refused_in_every_format(format, value, kind, tmp_path):
    path = jsonl(tmp_path / "d.jsonl", VALID[format], value)
    expected = f"{path}: line 3, record 1 is {kind}, not an object; {HINTS[format]}"
    assert error(load_records, path) == expected
    assert error(load_records, path, format) == expected


@pytest.mark.parametrize("row,expected", [
    ({"messages": {"role": "user"}}, "record 0 has no messages (an object); give a non-empty list of {role, content} "
                                     "objects"),
    ({"messages": []}, "record 0 has no messages (an empty list); give a non-empty list of {role, content} objects"),
    ({"messages": [USER, [1]]}, "record 0, message 1 is a list, not an object; every message has a 'role' and a "
                                "'content'"),
    ({"conversations": "hi"}, f"record 0 has no conversation turns (a string); {HINTS['sharegpt']}"),
    ({"conversations": [None]}, "record 0, message 0 is null, not an object; every turn has a 'from' and a 'value'"),
    ({"chosen": [USER, 7], "rejected": [USER, ASSISTANT]},
     "record 0, chosen, message 1 is a number, not an object; every message has a 'role' and a 'content'"),
])
def test_messages_that_are_not_lists_of_objects_are_refused(row, expected, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([row]))
    assert error(load_records, str(path)) == f"{path}: {expected}"


def test_a_record_that_is_not_an_object_fails_the_cli_before_the_model_loads(tmp_path, capsys, no_model):
    path = jsonl(tmp_path / "chat.jsonl", VALID["messages"], 42)
    message = train_error(capsys, tmp_path, f"data.path={path}", "data.eval_size=1", "data.train_size=null")
    assert message == f"{path}: line 3, record 1 is a number, not an object; {HINTS['messages']}"


# -- 2. labels are named by their place in the file, never by their place in the split ----------------
def sentiment_tsv(path, rows) -> str:
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return str(path)


GOOD_ROWS = [("fine", "pos"), ("awful", "neg"), ("great", "pos")]


def test_a_label_outside_task_labels_names_its_file_line_and_record(tmp_path, capsys, no_model):
    path = sentiment_tsv(tmp_path / "train.tsv", [*GOOD_ROWS, ("odd", "abc"), *GOOD_ROWS * 3])
    expected = (f"{path}: line 5, record 3 has the label 'abc', which is not one of the 2 classes (neg, pos); list "
                "every class in task.labels, or set task.num_labels")
    assert error(load_labelled, path, task_type="classification", names=("neg", "pos")) == expected
    message = train_error(capsys, tmp_path, "task.type=classification", "task.labels=[neg, pos]",
                          f"data.path={path}", "data.shuffle_seed=3", "data.eval_size=2", "data.train_size=null")
    assert message == expected


def test_labels_checked_after_shuffling_are_named_by_their_place_in_the_file(tmp_path):
    """Classes that come from elsewhere (an adapter's) are checked after the split: still by file place."""
    path = sentiment_tsv(tmp_path / "dev.tsv", [*GOOD_ROWS, ("meh", "neutral"), *GOOD_ROWS])
    split = split_records(load_labelled(path), None, 3, shuffle_seed=5)
    expected = (f"{path}: line 5, record 3 has the label 'neutral', which is not one of the 2 classes (neg, pos); "
                "list every class in task.labels, or set task.num_labels")
    assert error(check_labels, Labels(("neg", "pos")), split) == expected


def test_a_regression_label_that_is_no_number_is_refused_where_it_is_read(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps({"text": "good", "label": 4.5}) + "\n" + json.dumps({"text": "bad", "label": "low"}))
    assert error(load_labelled, str(path), task_type="regression") == (
        f"{path}: line 2, record 1 has the label 'low', not a finite number; regression labels are numbers")


# -- 3. the opening of a conversation ---------------------------------------------------------------
GREETING = [{"role": "assistant", "content": "welcome"}, USER, ASSISTANT]


def test_a_conversation_opening_with_a_learned_assistant_turn_is_refused_before_the_model_loads(
        tmp_path, capsys, no_model):
    path = jsonl(tmp_path / "chat.jsonl", {"messages": [USER, ASSISTANT]}, {"messages": GREETING},
                 {"messages": [USER, ASSISTANT]})
    assert error(load_records, path) == f"{path}: line 3, record 1 {STARTS_WITH_ASSISTANT}"
    message = train_error(capsys, tmp_path, f"data.path={path}", "data.eval_size=1", "data.train_size=null")
    assert message == f"{path}: line 3, record 1 {STARTS_WITH_ASSISTANT}"


def test_openings_the_encoding_can_render_are_kept(tmp_path):
    """Only what the masking cannot do with any template is refused; other orders are the template's."""
    path = jsonl(tmp_path / "chat.jsonl", {"messages": GREETING})
    with_system = load_records(path, system_prompt="be kind")[0]["messages"]
    assert [m["role"] for m in with_system] == ["system", "assistant", "user", "assistant"]
    assert load_records(path, loss_on="last_assistant")[0]["messages"] == GREETING
    assert load_records(path, loss_on="all")[0]["messages"] == GREETING
    assert load_records(path, answered=False)[0]["messages"] == GREETING  # prompts for lorakit generate
    unlearned = [{**GREETING[0], "train": False}, *GREETING[1:]]
    assert load_records(jsonl(tmp_path / "u.jsonl", {"messages": unlearned}))[0]["messages"] == unlearned
    two_users = [USER, USER, ASSISTANT]
    assert load_records(jsonl(tmp_path / "two.jsonl", {"messages": two_users}))[0]["messages"] == two_users


def test_a_preference_answer_needs_a_prompt_before_it(tmp_path):
    lone = {"chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "go"}]}
    path = jsonl(tmp_path / "pairs.jsonl", VALID["preference"], lone)
    assert error(load_records, path) == f"{path}: line 3, record 1, chosen {STARTS_WITH_ASSISTANT}"
    explicit = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": "go"}
    assert load_records(jsonl(tmp_path / "ok.jsonl", explicit))[0]["chosen"] == {"messages": [USER, ASSISTANT]}


# -- 4. CSV and TSV tables --------------------------------------------------------------------------
@pytest.mark.parametrize("row,count", [('"bor\ting"\t0', "3 values"), ("a\tb\tc\td", "4 values"),
                                       ("alone", "1 value")])
def test_a_tsv_row_with_another_value_count_than_the_header_is_refused(row, count, tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text(f"sentence\tlabel\nfine\t1\n{row}\nawful\t0\n")
    assert error(load_labelled, str(path)) == (
        f"{path}: line 3, record 1 has {count} but the header has 2 columns (sentence, label); {TAB_FIX}")


@pytest.mark.parametrize("row,count", [("x,1,2", "3 values"), ("x", "1 value")])
def test_a_csv_row_with_another_value_count_than_the_header_is_refused(row, count, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(f'text,label\nfine,1\n"two\nlines",0\n{row}\n')  # a quoted value may span lines
    assert error(load_labelled, str(path)) == (
        f"{path}: line 5, record 2 has {count} but the header has 2 columns (text, label); quote a field that holds "
        "a comma, and give every row one value per column")


@pytest.mark.parametrize("name", ["d.csv", "d.tsv"])
def test_a_header_that_names_a_column_twice_is_refused(name, tmp_path):
    separator = "," if name.endswith("csv") else "\t"
    path = tmp_path / name
    path.write_text(separator.join(["label", "text", "label"]) + "\n" + separator.join(["1", "hi", "0"]) + "\n")
    assert error(load_labelled, str(path)) == (
        f"{path}: the header (line 1) names the column 'label' twice (columns 1 and 3); rename or remove one")


@pytest.mark.parametrize("label", ["NaN", "nan", "[1]", "", " ", "null", "{}", "inf"])
def test_a_text_label_that_stands_for_no_value_is_refused(label, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\nfine,pos\nodd,{label}\n")
    assert error(load_labelled, str(path)) == f"{path}: line 3, record 1 has no usable 'label' value ({label!r}); " \
                                              f"{NO_LABEL}"


@pytest.mark.parametrize("label,shown", [(float("nan"), "NaN"), ([1], "[1]"), ({"a": 1}, '{"a": 1}'),
                                         (None, "null"), (True, "true")])
def test_a_json_label_that_is_missing_or_not_a_scalar_is_refused(label, shown, tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {"text": "fine", "label": 1}, {"text": "odd", "label": label})
    assert error(load_labelled, path, task_type="classification") == (
        f"{path}: line 3, record 1 has no usable 'label' value ({shown}); {NO_LABEL}")


def test_a_fraction_is_no_class(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {"text": "fine", "label": 1}, {"text": "odd", "label": 0.5})
    assert error(load_labelled, path, task_type="classification") == (
        f"{path}: line 3, record 1 has the label 0.5, neither a class id (a whole number) nor a class name (a "
        "string); use class ids or names, or task.type regression for numbers")
    assert load_labelled(path, task_type="regression")[1]["label"] == 0.5


def test_one_integer_label_is_one_class_unless_the_task_declares_more():
    assert error(Labels.of, "classification", [1, 1, "1"]) == (
        "classification needs at least 2 classes, the data has 1 (1); list them in task.labels, or use task.type "
        "regression")
    assert error(Labels.of, "classification", ["pos", "pos"]).startswith(
        "classification needs at least 2 classes, the data has 1 (pos);")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # declared classes may lack examples without a warning
        assert Labels.of("classification", [1, 1], num_labels=2).names == ("0", "1")
        assert Labels.of("classification", ["1"], names=("0", "1")).names == ("0", "1")
        assert Labels.of("classification", [0, 1, 1]).names == ("0", "1")


@pytest.mark.parametrize("values,unseen,hint", [([1, 2, 2], "0", "0..1"), ([0, 3, 1.0, "3"], "2", "0..2")])
def test_integer_labels_that_skip_a_class_warn(values, unseen, hint):
    expected = (f"the labels are class ids up to {max(int(v) for v in values)}, but no record has class {unseen}: the "
                f"classifier gets {max(int(v) for v in values) + 1} classes, 1 without an example; number the "
                f"classes {hint}, or declare them in task.num_labels (or task.labels)")
    with pytest.warns(UserWarning) as caught:
        Labels.of("classification", values)
    assert [str(w.message) for w in caught] == [expected]


def test_valid_tables_read_as_before(tmp_path):
    """Blank lines, quoted commas and newlines in CSV, unbalanced quotes in TSV: unchanged."""
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n\n"a, b",pos\n"two\nlines",neg\n\n')
    assert load_labelled(str(csv_path)) == [{"text": "a, b", "label": "pos"}, {"text": "two\nlines", "label": "neg"}]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text('sentence\tlabel\nhe said "no\t1\n\n"quoted\t0\n')
    assert [r["text"] for r in load_labelled(str(tsv_path))] == ['he said "no', '"quoted']
    error_in_third = error(load_labelled, sentiment_tsv(tmp_path / "t.tsv", [("a", "pos"), ("b", "")]))
    assert error_in_third.startswith(f"{tmp_path / 't.tsv'}: line 3, record 1 has no usable 'label' value")


@pytest.mark.parametrize("label", ["--3", "²", "1 2"])
def test_a_label_that_only_looks_like_a_number_is_a_name(label):
    """Only ASCII digits (with one sign) make a class id; anything else is a class name, never a crash."""
    from lorakit.data.labelled import Labels

    assert Labels.of("classification", ["1", label]).names == tuple(sorted(["1", label]))
