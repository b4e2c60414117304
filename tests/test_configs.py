"""Every config shipped in configs/ stays valid as options change: sections, keys, types, ranges,
method options and compare runs are checked without loading a model or reading data."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.config import load_config
from lorakit.experiments.spec import load_compare_config
from lorakit.io.yaml_files import read_yaml

FOLDER = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(FOLDER.rglob("*.yaml"))


def test_the_shipped_configs_are_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(FOLDER)))
def test_a_shipped_config_is_valid(path):
    raw = read_yaml(path)
    if "compare" in raw:
        base, spec, runs = load_compare_config(raw, [])
        assert runs and spec.seeds and base.model.path
    else:
        assert load_config(path).model.path
