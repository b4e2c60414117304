"""Method options: resolution, derived defaults, null, and options a method does not take."""

from __future__ import annotations

import pytest

import lorakit
from lorakit.config import build_config
from lorakit.presets import option_names, resolve
from tiny import tiny_llama


def test_derived_defaults_follow_the_options_and_the_model_they_depend_on():
    spec = resolve("weight_lora")
    assert lorakit.attach(tiny_llama(), spec, selection_steps=10).spec.selection_warmup == 2
    four = lorakit.attach(tiny_llama(), "weight_lora", rank=2).spec
    assert four.weight_lora_k == 4  # ⌈8 / 2⌉: q, k, v, o of two blocks
    assert lorakit.attach(tiny_llama(), four, targets="all-linear").spec.weight_lora_k == 7
    adalora = resolve("adalora", adalora_total_steps=100)
    again = resolve(adalora, rank=16, adalora_total_steps=1000)
    assert (again.adalora_t_init, again.adalora_t_final, again.adalora_target_rank) == (100, 200, 8)
    assert lorakit.attach(tiny_llama(), resolve("lora_drop"), drop_top_n=2).spec.drop_threshold is None


def test_an_option_at_its_default_is_accepted_where_it_has_no_effect():
    """A shared compare section (alpha: 16) may hold runs of VeRA; a value that would change
    something is still refused."""
    assert lorakit.attach(tiny_llama(), "vera", rank=4, alpha=16).spec.form == "vera"
    assert lorakit.attach(tiny_llama(), "lora", lr_ratio_mode="b_only", lora_fa_projected=False)
    with pytest.raises(lorakit.LorakitError, match="VeRA has no α/r scale"):
        lorakit.attach(tiny_llama(), "vera", rank=4, alpha=32)


@pytest.mark.parametrize("option,needle", [("rank", "rank must be a positive integer, got None"),
                                           ("seed", "seed must be a non-negative integer, got None"),
                                           ("form", "unknown form None")])
def test_null_is_refused_where_it_is_no_value(option, needle):
    with pytest.raises(lorakit.LorakitError, match=needle):
        lorakit.attach(tiny_llama(), "lora", **{option: None})


def test_a_null_method_seed_in_a_config_is_refused():
    with pytest.raises(lorakit.LorakitError, match="config key 'method.seed' must be an integer, got None"):
        build_config({"method": {"name": "lora", "seed": None}, "train": {"seed": 5}})


def test_every_option_name_is_listed_once():
    names = option_names()
    assert len(names) == len(set(names)) and {"form", "rank", "gate_lr", "seed"} <= set(names)
    with pytest.raises(lorakit.LorakitError) as info:
        lorakit.attach(tiny_llama(), "lora", rnak=4)
    assert str(info.value).count("'rank'") + str(info.value).count(" rank,") <= 2


def test_a_spec_without_options_reads_as_the_plain_defaults():
    assert lorakit.MethodSpec().components() == "lora × kaiming × adamw × fixed"
    assert resolve(lorakit.MethodSpec(init="olora")).rank == 8
