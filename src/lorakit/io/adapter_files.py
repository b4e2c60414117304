"""A saved adapter's folder: ``lorakit_adapter.json`` (method, provenance, shapes) and
``lorakit_adapter.safetensors`` (its tensors), read with one-line errors for damaged files.

Format 2 records the effective value of every option of the method's components; format 1
(lorakit before the option declarations) left unset options null, and still loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import LorakitError

WEIGHTS_FILE = "lorakit_adapter.safetensors"
CONFIG_FILE = "lorakit_adapter.json"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
REQUIRED_CONFIG_KEYS = ("method", "targets", "base_fingerprint")


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a saved adapter folder (one-line errors for a missing or damaged one)."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise LorakitError(f"{path} is not a lorakit adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LorakitError(f"{config_path} is not valid JSON ({exc}); re-save the adapter") from None
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config] if isinstance(config, dict) else ["all"]
    if missing:
        raise LorakitError(f"{config_path} is not a lorakit adapter config (missing: {', '.join(missing)}); "
                           "re-save the adapter")
    if config.get("format_version") not in READABLE_FORMATS:
        raise LorakitError(f"{config_path}: unsupported adapter format {config.get('format_version')!r} "
                           f"(this lorakit reads formats {READABLE_FORMATS}); use the lorakit version that saved it")
    return config


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON config and tensors of a saved adapter folder (one-line errors for damaged files)."""
    config = read_adapter_config(path)
    weights_path = Path(path) / WEIGHTS_FILE
    try:
        return config, load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
        raise LorakitError(f"{weights_path} is not a readable safetensors file ({exc}); re-save the adapter") from None


def final_ranks(adapter_config: dict[str, Any]) -> dict[str, int]:
    """Rank per targeted layer from an adapter's JSON (``Adapter.config()``): AdaLoRA's kept
    triplets where present, else the pair's rank; layers a schedule removed count 0."""
    kept = adapter_config.get("kept_ranks") or {}
    ranks = {name: int(kept.get(name, rank)) for name, rank in adapter_config.get("ranks", {}).items()}
    ranks.update({name: 0 for name in adapter_config.get("removed", [])})
    return ranks
