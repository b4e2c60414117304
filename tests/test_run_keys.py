"""Run keys declared once: the checks, the resume rule and the docs come from the declarations."""

from __future__ import annotations

import dataclasses
import json

import pytest

import lorakit.config as config_module
from lorakit import LorakitError
from lorakit.config import RUN_KEYS, SECTIONS, RunConfig, load_config
from lorakit.loading import load_split
from lorakit.train.output_dir import FREE_ON_RESUME, comparable


def test_every_field_of_every_section_is_declared_with_help():
    fields = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert fields == set(RUN_KEYS)
    assert all(option.help and option.label == name for name, option in RUN_KEYS.items())


def _outside(option):
    """A value the declaration refuses, or None where it allows every value of its type."""
    if option.choices:
        return "no_such_choice"
    if option.minimum is not None:
        return (option.minimum if option.open_minimum else option.minimum - 1) if option.type is float \
            else int(option.minimum) - 1
    return None


@pytest.mark.parametrize("name", [n for n, o in RUN_KEYS.items() if _outside(o) is not None])
def test_every_declared_range_and_choice_is_checked(name):
    bad = _outside(RUN_KEYS[name])
    with pytest.raises(LorakitError, match=name.replace(".", r"\.")):
        load_config(None, [f"{name}={json.dumps(bad)}"])


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, (list, tuple)):
        return [*value, "x"]
    return "changed" if value is None else f"{value}-changed"


@pytest.mark.parametrize("name", list(RUN_KEYS))
def test_the_resume_rule_follows_the_declarations(name):
    section, key = name.split(".")
    saved = json.loads(json.dumps(RunConfig().to_dict()))
    resumed = json.loads(json.dumps(saved))
    resumed[section][key] = _changed(resumed[section][key])
    assert (comparable(saved) == comparable(resumed)) == (name in FREE_ON_RESUME)


def test_the_method_is_resolved_once_per_run(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    from lorakit.train import train

    calls = []
    real = config_module.resolve
    monkeypatch.setattr(config_module, "resolve", lambda *a, **k: calls.append(a) or real(*a, **k))
    config = load_config(None, [f"model.path={tiny_model_dir}", f"data.path={addition_data}", "data.train_size=16",
                                "data.eval_size=4", "train.max_steps=2", "train.report_to=none",
                                f"train.output_dir={tmp_path / 'run'}", "method.name=olora_plus",
                                "data.max_length=48"])
    train(config, progress=False)
    assert len(calls) == 1


def test_the_validation_split_is_carved_off_the_training_records(addition_data, tmp_path):
    common = [f"data.path={addition_data}", "data.train_size=40", "data.eval_size=10"]
    train, evaluation = load_split(load_config(None, common))
    carved, validation = load_split(load_config(None, [*common, "data.evaluate_on=validation"]))
    assert carved + validation == train and len(validation) == 4 and not set(map(str, validation)) & set(
        map(str, evaluation))
    seven = load_config(None, [*common, "data.evaluate_on=validation", "data.validation_size=7"])
    assert len(load_split(seven)[1]) == 7
    (tmp_path / "v.json").write_text(json.dumps([{"instruction": "Add 1 and 1.", "input": "", "output": "2"}]))
    given = load_config(None, [*common, "data.evaluate_on=validation", f"data.validation_path={tmp_path / 'v.json'}",
                               f"data.eval_path={tmp_path / 'absent.json'}"])  # the eval file is never read
    assert load_split(given) == (train, [{"instruction": "Add 1 and 1.", "input": "", "output": "2"}])
    with pytest.raises(LorakitError, match="data.validation_size 40 leaves no training record"):
        load_split(load_config(None, [*common, "data.evaluate_on=validation", "data.validation_size=40"]))
    for name in ("path", "eval_path", "held_out_path"):  # the validation file is none of the scored or trained ones
        same = {"data.path": addition_data, f"data.{name}": tmp_path / "v.json"}
        with pytest.raises(LorakitError, match=f"data.validation_path is data.{name} "):
            load_config(None, [*common, *(f"{k}={v}" for k, v in same.items()),
                               f"data.validation_path={tmp_path / '.' / 'v.json'}"])
