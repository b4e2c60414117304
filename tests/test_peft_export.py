"""PEFT-format export: PEFT loads the file onto the original base model and computes the same
logits as lorakit's adapted model, for every preset and for the schedules' variable shapes."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import lorakit
from lorakit.ops.resize import compact
from test_contracts import TARGETS, logits, run_options, train_steps
from tiny import attach, batch, full_precision_methods, tiny_llama

WEIGHTS = "adapter_model.safetensors"

# schedules with settings that make them resize, remove or share layers within a few steps
SCHEDULE_CASES = {
    "weight_lora": {"selection_steps": 2, "weight_lora_k": 5},
    "simplex_lora": {"simplex_every": 1, "simplex_reallocations": 2},
    "lora_drop": {"drop_warmup_steps": 1, "drop_top_n": 3, "drop_threshold": None},
    "adalora": {"adalora_total_steps": 6, "adalora_t_init": 1, "adalora_t_final": 2, "adalora_target_rank": 2},
}


def trained(method: str, steps: int = 4, **options):
    model = tiny_llama()
    overrides = {**run_options(method, steps), **options}
    if method == "delta_lora":
        overrides.setdefault("dropout", 0.0)
    adapter = attach(model, method, rank=4, targets=TARGETS, **overrides)
    train_steps(model, adapter, batch(), steps=steps, lr=2e-2)
    return model, adapter


def assert_peft_matches(model, adapter, folder):
    x = batch(seed=1)
    expected = logits(model, x)
    assert (expected - logits(tiny_llama(), x)).abs().max() > 1e-3  # training moved the model
    adapter.save_peft(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    # one rank and scale 1 for every layer: nothing a reader could scale differently
    assert config["r"] == config["lora_alpha"] and not config["rank_pattern"] and not config["alpha_pattern"]
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")} == {config["r"]}
    peft_model = PeftModel.from_pretrained(tiny_llama(), folder).eval()
    torch.testing.assert_close(logits(peft_model, x), expected, atol=5e-5, rtol=0)
    return config, tensors


@pytest.mark.parametrize("method", full_precision_methods())
def test_peft_loads_every_preset_with_the_same_logits(method, tmp_path):
    model, adapter = trained(method, **SCHEDULE_CASES.get(method, {}))
    config, tensors = assert_peft_matches(model, adapter, tmp_path / "peft")
    assert config["use_dora"] == (method == "dora")
    exported = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                for k in tensors if k.endswith("lora_A.weight")}
    assert exported == set(adapter.layers)


def test_spectral_init_exports_against_the_original_weights(tmp_path):
    """OLoRA rewrote W; the export carries −s·B₀A₀, so the untouched base plus the file is the
    adapted model, at rank 2r."""
    model, adapter = trained("olora_plus")
    config, _ = assert_peft_matches(model, adapter, tmp_path / "peft")
    assert config["r"] == 2 * adapter.spec.rank


def test_delta_lora_export_carries_the_base_update_without_extra_rank(tmp_path):
    """W moved by λs(BA − B_K A_K); with s·BA that is rank 2r, not 3r."""
    model, adapter = trained("delta_lora", delta_start_step=1)
    config, _ = assert_peft_matches(model, adapter, tmp_path / "peft")
    assert config["r"] == 2 * adapter.spec.rank


def test_dora_with_olora_init_exports(tmp_path):
    model, adapter = trained("dora", init="olora")
    config, tensors = assert_peft_matches(model, adapter, tmp_path / "peft")
    assert config["use_dora"] and any(k.endswith("lora_magnitude_vector") for k in tensors)


def test_removed_layers_are_named_exactly_and_the_rest_by_suffix(tmp_path):
    _, removing = trained("weight_lora", **SCHEDULE_CASES["weight_lora"])
    removing.save_peft(tmp_path / "weight_lora")
    names = json.loads((tmp_path / "weight_lora" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(names) == sorted(removing.layers) and len(names) == 5
    _, plain = trained("lora")
    plain.save_peft(tmp_path / "lora")
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["target_modules"] == sorted(TARGETS)


def test_compact_keeps_the_product_at_its_numerical_rank():
    generator = torch.Generator().manual_seed(0)
    B, A = torch.randn(40, 3, generator=generator), torch.randn(3, 30, generator=generator)
    B2, A2 = compact(torch.cat([B, 2 * B], dim=1), torch.cat([A, -A], dim=0))  # B A − 2 B A = −B A
    assert B2.shape == (40, 3) and A2.shape == (3, 30)
    torch.testing.assert_close(B2 @ A2, -(B @ A), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["olora_plus", "dora", "vera", "delta_lora"])
def test_cli_export_equals_the_api_export(method, tiny_model_dir, addition_data, tmp_path):
    """`lorakit export` rebuilds the adapter on a bf16 copy of the base; what it writes is the
    adapter's own float32 content, identical to exporting from a float32 model."""
    from transformers import AutoModelForCausalLM

    from test_train import cli, main_exit, write_config

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=3", f"method.name={method}", "method.lr_ratio=null",
                          "method.dropout=0.0", "train.eval_every=null")
    assert main_exit(["train", str(config), "--quiet"]) == 0  # in this process: the export is what runs as a command
    exported = cli("export", str(tmp_path / "run" / "adapter"), str(tmp_path / "cli"))
    assert exported.returncode == 0, exported.stderr
    rank = json.loads((tmp_path / "cli" / "adapter_config.json").read_text())["r"]
    assert f"--max-lora-rank >= {rank}" in exported.stdout
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    lorakit.load(model, tmp_path / "run" / "adapter").save_peft(tmp_path / "api")
    ours, theirs = load_file(tmp_path / "api" / WEIGHTS), load_file(tmp_path / "cli" / WEIGHTS)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], atol=1e-6, rtol=1e-6)
    assert json.loads((tmp_path / "cli" / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == str(tiny_model_dir.resolve())

    half = cli("export", str(tmp_path / "run" / "adapter"), str(tmp_path / "bf16"), "--dtype", "bfloat16")
    assert half.returncode == 0, half.stderr
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "bf16" / WEIGHTS).values())


def test_cli_export_of_a_missing_adapter_is_one_line_exit_2(tmp_path):
    from test_train import cli

    missing = cli("export", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "nowhere" in missing.stderr


def test_the_embedded_model_is_recorded_by_its_hub_id(tmp_path):
    """PEFT and vLLM resolve ``base_model_name_or_path``; the embedded GGUF's own name means nothing
    to them, so the API export (like the CLI's) records the model it was made from."""
    from lorakit.models import EMBEDDED_HUB_ID, EMBEDDED_NAME

    model = tiny_llama()
    model.config._name_or_path = EMBEDDED_NAME
    adapter = lorakit.attach(model, "lora", rank=4, targets=TARGETS)
    config = json.loads((adapter.save_peft(tmp_path / "peft") / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_HUB_ID
    named = adapter.save_peft(tmp_path / "named", base_model="me/mine")
    config = json.loads((named / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "me/mine"
