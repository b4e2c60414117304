"""Shared pytest configuration."""

from __future__ import annotations


def pytest_configure(config) -> None:
    # slow tests load a real model (~20 s); deselect them with `-m "not slow"`
    config.addinivalue_line("markers", "slow: loads a real model; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "quality: short real-model runs of every preset (minutes); deselected unless "
                                       "-m quality")


import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ADDITION = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} plus {b} is {a + b}."}
            for a in range(8) for b in range(8)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and a BPE tokenizer trained here, saved as a local HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lorakit.data import format_prompt
    from tiny import tiny_llama

    corpus = [format_prompt(r, "alpaca") + r["output"] for r in ADDITION]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("tiny_model")
    model = tiny_llama(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def quantizable_model_dir(tiny_model_dir, tmp_path_factory):
    """The CLI tests' tiny model with NF4-friendly shapes (bitsandbytes' CPU NF4 kernel wants in_features a
    multiple of 64) and the same tokenizer."""
    from transformers import AutoTokenizer

    from tiny import tiny_llama

    folder = tmp_path_factory.mktemp("quantizable")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tiny_llama(vocab_size=len(tokenizer), intermediate_size=128).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def addition_data(tmp_path_factory) -> Path:
    """64 Alpaca-format records (``Add a and b.`` → ``a plus b is c.``) as a JSON file."""
    path = tmp_path_factory.mktemp("data") / "addition.json"
    path.write_text(json.dumps(ADDITION))
    return path
