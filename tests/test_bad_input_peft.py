"""A damaged or foreign PEFT adapter folder given to ``lorakit import``: one ``lorakit: error:``
line naming the file and key or tensor, exit code 2, no traceback, no output folder; every
defect that can be seen in the folder is refused before the base model loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from cli_lines import other_lines
from lorakit.cli import main
from lorakit.io.peft_format import CONFIG_FILE, PREFIX, WEIGHTS_FILE
from tiny import tiny_llama

LAYER = PREFIX + "model.layers.0.self_attn.q_proj."
A, B, M = LAYER + "lora_A.weight", LAYER + "lora_B.weight", LAYER + "lora_magnitude_vector"
DROP = object()  # a config key to remove


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """PEFT adapters on tiny Llamas (r=4, q_proj and v_proj), saved once: ``lora``, ``dora``,
    ``other_base`` (a base of another width), ``lm_head`` (with ``modules_to_save``, vocabulary 128)."""
    root = tmp_path_factory.mktemp("peft")
    variants = {"lora": ({}, {}), "dora": ({"use_dora": True}, {}),
                "other_base": ({}, {"hidden_size": 32, "intermediate_size": 48}),
                "lm_head": ({"modules_to_save": ["lm_head"]}, {})}
    for name, (config, base) in variants.items():
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, **config)
        get_peft_model(tiny_llama(**base), lora).save_pretrained(root / name)
    return root


def settings(**changes):
    """An edit of ``adapter_config.json``: set keys (``DROP`` removes one)."""
    def edit(folder):
        config = json.loads((folder / CONFIG_FILE).read_text())
        config.update(changes)
        (folder / CONFIG_FILE).write_text(json.dumps({k: v for k, v in config.items() if v is not DROP}))
    return edit


def config_bytes(data: bytes):
    """An edit that replaces ``adapter_config.json`` with ``data``."""
    return lambda folder: (folder / CONFIG_FILE).write_bytes(data)


def weights_bytes(cut):
    """An edit that replaces ``adapter_model.safetensors`` with ``cut(its bytes)``."""
    return lambda folder: (folder / WEIGHTS_FILE).write_bytes(cut((folder / WEIGHTS_FILE).read_bytes()))


def removed(file: str):
    """An edit that deletes ``file``."""
    return lambda folder: (folder / file).unlink()


def tensors(change):
    """An edit of the tensors: ``change({key: tensor})`` is saved in their place."""
    def edit(folder):
        save_file(change(load_file(folder / WEIGHTS_FILE)), folder / WEIGHTS_FILE)
    return edit


def replaced(key: str, new):
    """A tensor edit: ``key``'s tensor becomes ``new(tensor)`` (``None``: the key is removed)."""
    def change(weights):
        value = new(weights.pop(key))
        return weights if value is None else {**weights, key: value.contiguous()}
    return tensors(change)


def both(*edits):
    """An edit made of ``edits``, in order."""
    def edit(folder):
        for each in edits:
            each(folder)
    return edit


CONFIG_CASES = {  # id: (edit, what the error line names)
    "config_list": (config_bytes(b"[1, 2]"), ["JSON list"]),
    "config_string": (config_bytes(b'"LORA"'), ["JSON string"]),
    "config_number": (config_bytes(b"5"), ["JSON number"]),
    "config_null": (config_bytes(b"null"), ["JSON null"]),
    "invalid_json": (config_bytes(b'{"r": 4,'), ["not valid JSON"]),
    "not_utf8": (config_bytes(b'{"r": 4, "peft_type": "LORA\xff"}'), ["not UTF-8"]),
    "config_missing": (removed(CONFIG_FILE), ["has no"]),
    "alpha_string": (settings(lora_alpha="abc"), ['lora_alpha is "abc"']),
    "alpha_null": (settings(lora_alpha=None), ["lora_alpha is null"]),
    "alpha_bool": (settings(lora_alpha=True), ["lora_alpha is true"]),
    "alpha_nan": (settings(lora_alpha=float("nan")), ["lora_alpha is NaN"]),
    "alpha_infinite": (settings(lora_alpha=float("inf")), ["lora_alpha is Infinity"]),
    "alpha_zero": (settings(lora_alpha=0), ["lora_alpha is 0", "> 0"]),
    "alpha_negative": (settings(lora_alpha=-8), ["lora_alpha is -8"]),
    "r_string": (settings(r="4"), ['r is "4"', "whole number"]),
    "r_zero": (settings(r=0), ["r is 0"]),
    "r_fraction": (settings(r=4.5), ["r is 4.5"]),
    "r_bool": (settings(r=True), ["r is true"]),
    "r_null": (settings(r=None), ["r is null"]),
    "rank_pattern_list": (settings(rank_pattern=["q_proj"]), ["rank_pattern is", "mapping"]),
    "alpha_pattern_list": (settings(alpha_pattern=[["q_proj", 2]]), ["alpha_pattern is", "mapping"]),
    "rank_pattern_value": (settings(rank_pattern={"q_proj": "2"}), ["rank_pattern['q_proj'] is \"2\""]),
    "alpha_pattern_null": (settings(alpha_pattern={"v_proj": None}), ["alpha_pattern['v_proj'] is null"]),
    "pattern_regex": (settings(rank_pattern={"q_proj(": 2}), ["rank_pattern key 'q_proj('", "regular expression"]),
    "target_modules_number": (settings(target_modules=5), ["target_modules is 5"]),
    "target_modules_mixed": (settings(target_modules=["q_proj", 1]), ["target_modules is"]),
    "use_dora_string": (settings(use_dora="yes"), ['use_dora is "yes"', "true or false"]),
    "use_rslora_number": (settings(use_rslora=1), ["use_rslora is 1"]),
    "peft_type_ia3": (settings(peft_type="IA3"), ['peft_type is "IA3"']),
    "peft_type_missing": (settings(peft_type=DROP), ["peft_type is missing"]),
    "modules_to_save_string": (settings(modules_to_save="lm_head"), ['modules_to_save is "lm_head"']),
    "modules_to_save_absent": (settings(modules_to_save=["lm_head"]), ["modules_to_save", "holds no weights"]),
    "dropout_string": (settings(lora_dropout="abc"), ["lora_dropout is"]),
    "dropout_one": (settings(lora_dropout=1), ["lora_dropout is 1"]),
    "base_model_number": (settings(base_model_name_or_path=5), ["base_model_name_or_path is 5"]),
    "lora_bias": (settings(lora_bias=True), ["lora_bias is true", "trains biases"]),
}

WEIGHT_CASES = {
    "weights_missing": ("lora", removed(WEIGHTS_FILE), ["has no"]),
    "truncated": ("lora", weights_bytes(lambda data: data[: len(data) // 2]), ["not a readable safetensors"]),
    "header_cut": ("lora", weights_bytes(lambda data: data[:20]), ["not a readable safetensors"]),
    "not_safetensors": ("lora", weights_bytes(lambda data: b"PK\x03\x04 a zip file"), ["not a readable"]),
    "empty_file": ("lora", weights_bytes(lambda data: b""), ["not a readable safetensors"]),
    "lora_A_1d": ("lora", replaced(A, lambda t: t[0]), [A, "shape 64", "matrix"]),
    "lora_A_3d": ("lora", replaced(A, lambda t: t[None]), [A, "shape 1×4×64"]),
    "lora_B_1d": ("lora", replaced(B, lambda t: t[:, 0]), [B, "shape 64"]),
    "lora_A_empty": ("lora", replaced(A, lambda t: t[:0]), [A, "shape 0×64"]),
    "ranks_disagree": ("lora", replaced(B, lambda t: t[:, :3]), ["q_proj", "rank 4", "rank 3"]),
    "rank_not_r": ("lora", settings(r=8), ["q_proj", "has rank 4", CONFIG_FILE, "r=8"]),
    "rank_not_pattern": ("lora", settings(rank_pattern={"q_proj": 2}), ["q_proj", "has rank 4", "r=2"]),
    "a_without_b": ("lora", replaced(B, lambda t: None), ["q_proj", "no lora_B"]),
    "b_without_a": ("lora", replaced(A, lambda t: None), ["q_proj", "no lora_A"]),
    "lora_A_int": ("lora", replaced(A, lambda t: t.to(torch.int32)), [A, "int32", "floating point"]),
    "lora_B_bool": ("lora", replaced(B, lambda t: t > 0), [B, "bool"]),
    "no_lora_tensors": ("lora", tensors(lambda weights: {}), ["holds no LoRA weights"]),
    "trained_bias": ("lora", tensors(lambda weights: {**weights, LAYER + "lora_B.bias": torch.zeros(64)}),
                     ["lora_B.bias", "not a LoRA weight"]),
    "magnitude_short": ("dora", replaced(M, lambda t: t[:10]), ["q_proj", "magnitude of 10 entries", "64 rows"]),
    "magnitude_2d": ("dora", replaced(M, lambda t: t[None]), [M, "shape 1×64"]),
    "magnitude_int": ("dora", replaced(M, lambda t: t.to(torch.int64)), [M, "int64"]),
    "head_scalar": ("lora", both(settings(task_type="SEQ_CLS", modules_to_save=["score"], base_model_name_or_path="b"),
                                 tensors(lambda weights: {**weights, PREFIX + "score.weight": torch.tensor(1.0)})),
                    ["output layer", "shape scalar"]),
    "magnitude_without_dora": ("dora", settings(use_dora=False), ["q_proj", "DoRA magnitude", "use_dora"]),
}

CASES = {**{key: ("lora", edit, CONFIG_FILE, needles) for key, (edit, needles) in CONFIG_CASES.items()},
         **{key: (source, edit, WEIGHTS_FILE, needles) for key, (source, edit, needles) in WEIGHT_CASES.items()}}


def assert_refused(argv: list[str], needles: list[str], file: str, out, capsys, loaded: bool = False) -> None:
    """``lorakit`` with ``argv`` exits 2 with one error line naming ``file`` and ``needles``, writing nothing;
    before that line, status lines only where the model ``loaded`` first (else it is the only line: nothing
    was loaded)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = other_lines(err) if loaded else err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lorakit: error: "), err
    assert "Traceback" not in err
    assert all(needle in lines[0] for needle in [file, *needles]), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("source, edit, file, needles", CASES.values(), ids=CASES.keys())
def test_a_defect_in_the_folder_is_refused_before_the_model_loads(source, edit, file, needles, adapters, tmp_path,
                                                                  capsys, monkeypatch):
    """Each defect the folder shows: refused by ``read_peft``, before the base model loads."""
    folder = shutil.copytree(adapters / source, tmp_path / "peft")
    edit(folder)
    monkeypatch.setattr("lorakit.models.load_model", lambda *args, **kwargs: pytest.fail("the model loaded"))
    assert_refused(["import", str(folder), str(tmp_path / "out")], needles, file, tmp_path / "out", capsys)


@pytest.mark.parametrize("source, needles", [
    ("other_base", ["model.layers.0.self_attn.q_proj", "as 32×32", "is 64×64"]),
    ("lm_head", ["lm_head.weight", "modules_to_save", "as 128×64"]),
], ids=["layer_shape", "saved_module_shape"])
def test_an_adapter_for_another_base_is_one_line(source, needles, adapters, tiny_model_dir, tmp_path, capsys):
    """The fit to the base is known once the model loads: still one line, naming layer and shapes."""
    out = tmp_path / "out"
    assert_refused(["import", str(adapters / source), str(out), "--model", str(tiny_model_dir)], needles,
                   WEIGHTS_FILE, out, capsys, loaded=True)
