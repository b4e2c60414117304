"""The training loop, checkpoints, resume and the CLI, on a tiny model saved to disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lorakit
from cli_lines import other_lines
from lorakit.config import load_config
from lorakit.train import train
from lorakit.train.checkpoint import latest_checkpoint

ADAPTER = "adapter/lorakit_adapter.safetensors"


def overrides(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={model_dir}", f"data.path={data}", "data.train_size=48", "data.eval_size=16",
            "data.shuffle_seed=0", "data.max_length=48", "method.name=olora_plus", "method.rank=4",
            "method.lr_ratio=0.5", "method.dropout=0.1", "method.targets=all-linear",
            "train.lr=5e-3", "train.batch_size=4", "train.grad_accum=2", "train.epochs=2",
            "train.log_every=2", "train.eval_every=4", "train.save_every=3",
            f"train.output_dir={out}", *extra]


def run(model_dir, data, out, *extra, resume=False, callbacks=()):
    config = load_config(None, overrides(model_dir, data, out, *extra))
    return train(config, resume=resume, callbacks=callbacks, progress=False)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_run_outputs(full: Path, cut: Path) -> None:
    """``cut`` (a resumed run) logged and summarised what ``full`` (uninterrupted) did, less what
    each invocation measures anew (times, memory) and the output folder's own path."""
    anew = ("seconds", "phase_seconds", "seconds_per_step", "peak_memory_mib", "adapter")
    summary = lambda out: {k: v for k, v in json.loads((out / "summary.json").read_text()).items()  # noqa: E731
                           if k not in anew}
    assert summary(cut) == summary(full)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(metrics(cut)) == strip(metrics(full))


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard itself reads from the run's event files: tag → [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_training_run_writes_everything_and_learns(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "run"
    summary = run(tiny_model_dir, addition_data, out)
    assert summary["steps"] == 12  # 48 examples / (4 × 2) per step × 2 epochs
    records = metrics(out)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.3
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8, 10, 12]
    assert all(len(r["lr"]) == 2 for r in records if "lr" in r)  # LoRA+ groups A and B
    assert (out / ADAPTER).is_file() and (out / "config.yaml").is_file()
    assert json.loads((out / "summary.json").read_text())["eval_loss"] == pytest.approx(evals[-1]["eval_loss"])
    assert latest_checkpoint(out).name == "step-0000012"
    assert len(list((out / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints
    board = tensorboard_scalars(out)
    assert board["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records if "loss" in r]
    assert [step for step, _ in board["train/lr/B"]] == [2, 4, 6, 8, 10, 12] and "train/lr/A" in board
    assert board["eval/eval_loss"] == [(r["step"], pytest.approx(r["eval_loss"], rel=1e-6)) for r in evals]
    assert [step for step, _ in board["eval/bleu"]] == [12] and "eval/rougeL" in board


class Crash(RuntimeError):
    pass


def crash_at(step):
    def callback(info):
        if info.step == step:
            raise Crash(f"simulated crash after step {step}")
    return callback


@pytest.mark.parametrize("crash,checkpoint", [
    (5, 3),  # the last checkpoint falls inside a log window (2–4)
    (8, 6),  # ... on a log step, whose record was written before the checkpoint
])
def test_resume_after_crash_equals_uninterrupted(crash, checkpoint, tiny_model_dir, addition_data, tmp_path):
    run(tiny_model_dir, addition_data, tmp_path / "full")
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", callbacks=[crash_at(crash)])
    assert latest_checkpoint(tmp_path / "cut").name == f"step-{checkpoint:07d}"
    run(tiny_model_dir, addition_data, tmp_path / "cut", resume=True)
    full, cut = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    same_run_outputs(tmp_path / "full", tmp_path / "cut")
    # TensorBoard hides what the crashed run logged past its checkpoint, and only that
    assert tensorboard_scalars(tmp_path / "cut") == tensorboard_scalars(tmp_path / "full")


def test_resumed_tensorboard_file_sorts_after_the_crashed_one_in_the_same_second(tiny_model_dir, addition_data,
                                                                                  tmp_path, monkeypatch):
    """Event files are read in name order (second, host, pid, an unpadded counter): with the
    crashed run's file counted 8 and the resumed one 10 in the same second, "10" < "8" would put
    the purge before the records it hides, unless the resume waits for the next second."""
    from tensorboard.summary.writer import event_file_writer

    from lorakit.train import run_log

    class Clock:  # a frozen clock that only sleeping moves
        now = 1_800_000_000.0

        def time(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    clock = Clock()
    monkeypatch.setattr(event_file_writer, "time", clock)
    monkeypatch.setattr(run_log, "time", clock)
    run(tiny_model_dir, addition_data, tmp_path / "full")
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(8))
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", callbacks=[crash_at(8)])
    run(tiny_model_dir, addition_data, tmp_path / "cut", resume=True)
    files = sorted(p.name for p in (tmp_path / "cut" / "tensorboard").glob("events.out.tfevents.*"))
    assert [name.split(".")[3] for name in files] == ["1800000000", "1800000001"]
    assert tensorboard_scalars(tmp_path / "cut") == tensorboard_scalars(tmp_path / "full")


def test_delta_lora_resume_equals_uninterrupted(tiny_model_dir, addition_data, tmp_path):
    """Delta-LoRA changes the base weights while training; checkpoints keep them exactly."""
    extra = ("method.name=delta_lora", "method.lr_ratio=null", "method.dropout=0.0",
             "method.delta_start_step=2")
    run(tiny_model_dir, addition_data, tmp_path / "full", *extra)
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, callbacks=[crash_at(8)])
    run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, resume=True)
    full, cut = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert full.keys() == cut.keys() and any(".delta_start." in key for key in full)
    assert all(torch.equal(full[key], cut[key]) for key in full)
    assert metrics(tmp_path / "cut")[-1]["eval_loss"] == metrics(tmp_path / "full")[-1]["eval_loss"]


def test_simplex_lora_resume_across_reallocations_equals_uninterrupted(tiny_model_dir, addition_data, tmp_path):
    """Ranks change at steps 2, 4 and 6; the run is cut at 5 (last checkpoint: step 3)."""
    extra = ("method.name=simplex_lora", "method.lr_ratio=null", "method.init=olora",
             "method.simplex_every=2", "method.simplex_reallocations=3", "method.gate_lr=0.05")
    run(tiny_model_dir, addition_data, tmp_path / "full", *extra)
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, callbacks=[crash_at(5)])
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000003"
    run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, resume=True)
    full, cut = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[key], cut[key]) for key in full)
    ranks = json.loads((tmp_path / "full" / "adapter" / "lorakit_adapter.json").read_text())["ranks"]
    assert len(set(ranks.values())) > 1  # the schedule really changed ranks


def test_grad_accumulation_matches_one_large_batch(tiny_model_dir, addition_data, tmp_path):
    common = ("method.dropout=0.0", "train.max_steps=1", "train.max_grad_norm=null")
    run(tiny_model_dir, addition_data, tmp_path / "a", *common, "train.batch_size=8", "train.grad_accum=1",
        "train.report_to=none")
    assert not (tmp_path / "a" / "tensorboard").exists() and (tmp_path / "a" / "metrics.jsonl").is_file()
    run(tiny_model_dir, addition_data, tmp_path / "b", *common, "train.batch_size=2", "train.grad_accum=4")
    a, b = load_file(tmp_path / "a" / ADAPTER), load_file(tmp_path / "b" / ADAPTER)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_adapter(tiny_model_dir, addition_data, tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    calls = []
    real = modeling_utils.checkpoint
    monkeypatch.setattr(modeling_utils, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    common = ("method.dropout=0.0", "train.max_steps=2")
    run(tiny_model_dir, addition_data, tmp_path / "a", *common)
    assert not calls
    run(tiny_model_dir, addition_data, tmp_path / "b", *common, "train.gradient_checkpointing=true")
    assert calls  # the layers really were recomputed in backward
    a, b = load_file(tmp_path / "a" / ADAPTER), load_file(tmp_path / "b" / ADAPTER)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_existing_run_needs_resume_and_same_config(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "run"
    run(tiny_model_dir, addition_data, out, "train.max_steps=3")
    with pytest.raises(lorakit.LorakitError, match="already holds a run"):
        run(tiny_model_dir, addition_data, out, "train.max_steps=3")
    with pytest.raises(lorakit.LorakitError, match="different config"):
        run(tiny_model_dir, addition_data, out, "train.max_steps=3", "train.lr=1e-3", resume=True)


def test_resume_with_a_list_of_targets(tiny_model_dir, addition_data, tmp_path):
    """The checkpoint stores the config as JSON (lists); the same config given with a targets list
    (a tuple in memory, as every YAML list of targets) is still the same config."""
    extra = ("method.targets=[q_proj,v_proj]",)
    with pytest.raises(Crash):
        run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, callbacks=[crash_at(4)])
    assert run(tiny_model_dir, addition_data, tmp_path / "cut", *extra, resume=True)["steps"] > 4


def test_resume_without_a_checkpoint(tiny_model_dir, addition_data, tmp_path, capsys):
    """--resume where nothing was saved yet starts the run; a finished run whose checkpoints are
    gone is refused, never trained over."""
    fresh = run(tiny_model_dir, addition_data, tmp_path / "new", "train.max_steps=2", "train.save_every=null",
                resume=True)
    assert "no checkpoint" in capsys.readouterr().err and fresh["steps"] == 2
    shutil.rmtree(tmp_path / "new" / "checkpoints")
    with pytest.raises(lorakit.LorakitError, match="finished run without checkpoints"):
        run(tiny_model_dir, addition_data, tmp_path / "new", "train.max_steps=2", "train.save_every=null",
            resume=True)


def test_adapter_from_another_base_model_is_refused(tiny_model_dir, addition_data, tmp_path):
    from tiny import tiny_llama

    run(tiny_model_dir, addition_data, tmp_path / "run", "train.max_steps=2")
    other = tiny_llama(seed=1, vocab_size=200)
    with pytest.raises(lorakit.LorakitError, match="different base model"):
        lorakit.load(other, tmp_path / "run" / "adapter")


# -- the CLI, as a user runs it ---------------------------------------------------------------
def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"})


def write_config(path: Path, model_dir: Path, data: Path, out: Path, *extra: str) -> Path:
    raw: dict = {}
    for item in overrides(model_dir, data, out, *extra):
        key, _, value = item.partition("=")
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_kill_and_resume_equals_uninterrupted(tiny_model_dir, addition_data, tmp_path):
    extra = ("train.epochs=20", "train.save_every=5", "train.eval_every=null")
    full = write_config(tmp_path / "full.yaml", tiny_model_dir, addition_data, tmp_path / "full", *extra)
    cut = write_config(tmp_path / "cut.yaml", tiny_model_dir, addition_data, tmp_path / "cut", *extra)
    assert cli("train", str(full), "--quiet").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(cut), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(tmp_path / "cut") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / ADAPTER).exists(), "the run finished before it could be killed"
    resumed = cli("train", str(cut), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "full" / ADAPTER), load_file(tmp_path / "cut" / ADAPTER)
    assert all(torch.equal(a[k], b[k]) for k in a)
    same_run_outputs(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("args,needle", [
    (["train", "{config}", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "{config}", "method.name=nope"], "unknown method 'nope'"),
    (["train", "{config}", "method.init=qr"], "unknown init 'qr'"),
    (["train", "{config}", "method.lr_ratio=0"], "must be a finite number > 0"),
    (["train", "{config}", "method.rank=100"], "rank 100 exceeds layer"),
    (["train", "{config}", "method.targets=[nothing_here]"], "match no adaptable nn.Linear"),
    (["train", "{config}", "data.path=/no/such/file.json"], "/no/such/file.json"),
    (["train", "{config}", "data.train_size=100", "data.eval_size=0", "data.offset=64"], "train"),
    (["train", "missing.yaml"], "missing.yaml does not exist"),
    (["eval", "{config}", "--adapter", "{other_adapter}"], "different base model"),
    (["train", "{config}", "train.lr=.inf"], "train.lr must be a finite number > 0"),
    (["train", "{config}", "train.max_grad_norm=0"], "train.max_grad_norm must be a finite number > 0, or null"),
    (["train", "{config}", "train.weight_decay=-1"], "train.weight_decay must be a finite number >= 0"),
    (["train", "{config}", "train.seed=-1"], "train.seed must be in 0..2**32-1, got -1"),
    (["train", "{config}", "train.seed=4294967296"], "train.seed must be in 0..2**32-1"),
    (["train", "{config}", "train.output_dir="], "train.output_dir is empty"),
    (["train", "{config}", "train.output_dir={afile}"], "cannot use train.output_dir"),
    (["train", "{config}", "method.name=null"], "method.name must be a preset name"),
    (["train", "{config}", "method.name=weight_lora", "method.lr_ratio=null", "method.selection_steps=500"],
     "the run has only"),
    (["train", "{config}", "eval.metrics=[]"], "eval.metrics is empty"),
    (["train", "{config}", "eval.metrics=3"], "must be a list, e.g. [a, b]"),
    (["train", "{tmp}"], "is a folder; pass a YAML file"),
    (["train", "{latin1}"], "is not UTF-8 text"),
    (["train", "{intkey}"], "unknown config key 'train.1'"),
    (["train", "{twice}"], "gives the key 'lr' twice at line 3; keep one"),
    (["eval", "{config}", "--adapter", "{tmp}/none"], "is not a lorakit adapter folder"),
    (["eval", "{config}", "--out", "{afile}"], "is a file; --out takes a folder"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, tiny_model_dir, addition_data, tmp_path, capsys):
    from lorakit.cli import main
    from tiny import tiny_llama

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "out")
    other = lorakit.attach(tiny_llama(seed=3, vocab_size=200), "lora", targets="all-linear", rank=2)
    other.save(tmp_path / "other")
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "latin1.yaml").write_bytes("train:\n  lr: 1e-4 # \xe9\n".encode("latin-1"))
    (tmp_path / "intkey.yaml").write_text("train:\n  1: 2\n")
    (tmp_path / "twice.yaml").write_text("train:\n  lr: 0.0\n  lr: 1.0e-3\n")
    args = [a.format(config=config, other_adapter=tmp_path / "other", tmp=tmp_path, afile=tmp_path / "afile",
                     latin1=tmp_path / "latin1.yaml", intkey=tmp_path / "intkey.yaml",
                     twice=tmp_path / "twice.yaml") for a in args]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = other_lines(err)  # a check that needs the model comes after its status lines
    assert len(lines) == 1 and lines[0].startswith("lorakit: error:"), lines
    assert err.strip().splitlines()[-1] == lines[0] and needle in lines[0]


def test_cli_malformed_data_names_record_and_field(tiny_model_dir, tmp_path):
    """In a real process: exit code 2, one line on stderr, no traceback."""
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, data, tmp_path / "out")
    result = cli("train", str(config))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "record 1" in result.stderr and "'output'" in result.stderr


def test_cli_train_eval_merge(tiny_model_dir, addition_data, tmp_path):
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=4")
    assert cli("train", str(config), "--quiet").returncode == 0
    evaluated = cli("eval", str(config), "--adapter", str(tmp_path / "run" / "adapter"))
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert json.loads(evaluated.stdout)["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)
    merged = cli("merge", str(tmp_path / "run" / "adapter"), str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    lorakit.load(base, tmp_path / "run" / "adapter")
    x = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base(x).logits, atol=2e-5, rtol=0)
    methods = cli("methods")
    assert methods.returncode == 0 and "olora_plus" in methods.stdout


def test_cli_outputs_never_delete_a_users_files(tiny_model_dir, addition_data, tmp_path, capsys):
    """merge and export write only into a new or empty folder, or one they wrote before; the
    refusal comes before any model loads, and the folder is left as it was."""
    from lorakit.cli import main

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=2", "train.eval_every=null")
    assert main(["train", str(config), "--quiet"]) == 0
    adapter = tmp_path / "run" / "adapter"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("mine")
    for command in ("merge", "export"):
        for out, needle in ((busy, f"notes.txt was not written by lorakit {command}"),
                            (tmp_path / "afile", "is a file"), (adapter, "is an input of lorakit")):
            capsys.readouterr()
            assert main([command, str(adapter), str(out)]) == 2
            assert needle in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine" and (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in adapter.iterdir()) == ["lorakit_adapter.json", "lorakit_adapter.safetensors"]
    for command in ("merge", "export"):  # a folder written by the same command may be written again
        out = tmp_path / command
        assert main([command, str(adapter), str(out)]) == 0
        first = sorted(p.name for p in out.iterdir())
        assert main([command, str(adapter), str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == first
        assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # readable like any file


def test_damaged_adapters_and_checkpoints_are_one_line_errors(tiny_model_dir, addition_data, tmp_path):
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=4", "train.save_every=2", "train.eval_every=null")
    assert main_exit(["train", str(config), "--quiet"]) == 0
    good = tmp_path / "run" / "adapter"
    damages = {
        "truncated weights": ("lorakit_adapter.safetensors", lambda b: b[: len(b) // 2], "not a readable safetensors"),
        "config is a list": ("lorakit_adapter.json", lambda b: b"[]", "is not a lorakit adapter config"),
        "config not UTF-8": ("lorakit_adapter.json", lambda b: b"\xff\xfe{", "is not valid JSON"),
        "config without method": ("lorakit_adapter.json",
                                  lambda b: json.dumps({k: v for k, v in json.loads(b).items()
                                                        if k != "method"}).encode(),
                                  "missing: method"),
        "ranks not integers": ("lorakit_adapter.json",
                               lambda b: json.dumps({**json.loads(b),
                                                     "ranks": {k: "x" for k in json.loads(b)["ranks"]}}).encode(),
                               "do not fit together"),
    }
    for what, (name, damage, needle) in damages.items():
        bad = tmp_path / what.replace(" ", "_")
        shutil.copytree(good, bad)
        (bad / name).write_bytes(damage((bad / name).read_bytes()))
        with pytest.raises(lorakit.LorakitError, match=needle) as info:
            lorakit.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), bad)
        assert "\n" not in str(info.value), what
    latest = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    (latest / "trainer_state.json").write_text("{")
    with pytest.raises(lorakit.LorakitError, match="is damaged"):
        run(tiny_model_dir, addition_data, tmp_path / "run", "train.max_steps=4", "train.save_every=2",
            "train.eval_every=null", resume=True)


def main_exit(args: list[str]) -> int:
    from lorakit.cli import main

    return main(args)


@pytest.mark.parametrize("method", ["dora", "vera", "lora_fa", "delta_lora"])
def test_cli_train_and_merge_every_new_preset(method, tiny_model_dir, addition_data, tmp_path):
    """The CLI trains each of these presets, and the merged export equals the loaded adapter."""
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "train.max_steps=3", f"method.name={method}", "method.lr_ratio=null",
                          "method.dropout=0.0", "train.eval_every=null")
    assert main_exit(["train", str(config), "--quiet"]) == 0  # the CLI in this process; merge runs as a command
    merged = cli("merge", str(tmp_path / "run" / "adapter"), str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapter = lorakit.load(base, tmp_path / "run" / "adapter")
    assert adapter.spec.name == method
    x = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base(x).logits, atol=2e-5, rtol=0)


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``lorakit`` in ``processes`` CPU processes (gloo), as ``accelerate launch`` runs it on GPUs
    (``ACCELERATE_USE_CPU`` is what ``accelerate launch --cpu`` sets)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "true"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "lorakit", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def train_one_and_two(model_dir: Path, data: Path, tmp_path: Path, common: tuple[str, ...], *two_only: str) -> Path:
    """Train ``common`` in one process × batch 4 (``tmp_path/one``) and two processes × batch 2
    (``tmp_path/two``, plus ``two_only``); the two-process config file."""
    one = write_config(tmp_path / "one.yaml", model_dir, data, tmp_path / "one", *common, "train.batch_size=4")
    two = write_config(tmp_path / "two.yaml", model_dir, data, tmp_path / "two", *common, "train.batch_size=2",
                       *two_only)
    assert cli("train", str(one), "--quiet").returncode == 0
    result = torchrun("train", str(two), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return two


def test_two_processes_train_the_same_adapter_as_one(tiny_model_dir, addition_data, tmp_path):
    """Data-parallel: 2 processes × batch 2 see the examples 1 process × batch 4 sees, and the loss
    is normalised by the tokens of all processes, so the adapters agree (to float rounding)."""
    # answers of 1 to 6 sentences: the processes' token counts differ, so a per-process
    # normalisation would weight their gradients differently from one large batch
    data = tmp_path / "uneven.json"
    data.write_text(json.dumps([{"instruction": f"Add {a} and {b}.", "input": "",
                                 "output": " ".join([f"{a} plus {b} is {a + b}."] * (1 + (3 * a + b) % 6))}
                                for a in range(8) for b in range(8)]))
    common = ("train.max_steps=3", "method.dropout=0.0", "train.eval_every=null", "train.save_every=2",
              "data.max_length=96")
    train_one_and_two(tiny_model_dir, data, tmp_path, common)
    a, b = load_file(tmp_path / "one" / ADAPTER), load_file(tmp_path / "two" / ADAPTER)
    assert a.keys() == b.keys()
    for key in a:  # float32 rounding, which Adam's division by √v magnifies where v is tiny: one element
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-5)  # of 384 differed by 1.8e-6 here
    losses = lambda out: [r["loss"] for r in metrics(out) if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)


@pytest.mark.parametrize("method,options", [
    ("simplex_lora", ("method.simplex_every=1", "method.simplex_reallocations=2")),
    ("weight_lora", ("method.selection_steps=2", "method.weight_lora_k=5")),
    ("lora_drop", ("method.drop_warmup_steps=2", "method.drop_top_n=3")),
])
def test_resizing_schedules_in_two_processes_equal_one(method, options, tiny_model_dir, addition_data, tmp_path):
    """Schedules that replace adapter parameters mid-run: every process makes the same change (LoRA-drop's
    importance is summed over the processes) and the data-parallel wrapper is rebuilt over the new
    parameters, so two processes train the adapter one process does."""
    # lr_scale 1: the tolerance below was measured at train.lr itself (SimplexLoRA's preset trains at 5×)
    common = (f"method.name={method}", "method.lr_ratio=null", "method.dropout=0.0", "method.lr_scale=1.0",
              "train.max_steps=4", "train.eval_every=null", "train.save_every=null", *options)
    train_one_and_two(tiny_model_dir, addition_data, tmp_path, common)
    config = lambda out: json.loads((out / "adapter" / "lorakit_adapter.json").read_text())  # noqa: E731
    for key in ("ranks", "removed", "shared"):
        assert config(tmp_path / "two")[key] == config(tmp_path / "one")[key]
    changed = config(tmp_path / "one")
    assert len(set(changed["ranks"].values())) > 1 or changed["removed"] or changed["shared"]  # the schedule acted
    # the same function; the factors themselves may differ where a resize's SVD meets (nearly) equal
    # singular values, whose vectors the rounding of a different gradient summation order rotates
    x = torch.randint(3, 100, (2, 12))
    outputs = []
    for out in ("one", "two"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        lorakit.load(model, tmp_path / out / "adapter")
        with torch.no_grad():
            outputs.append(model(x).logits)
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-5, rtol=1e-5)


def resume_two_from(tmp_path: Path, two: Path, step: int) -> Path:
    """A copy of the two-process run ``tmp_path/two`` cut back to its checkpoint of ``step`` (as if
    it had crashed right after it), resumed in two processes; the resumed run's folder."""
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "adapter")
    (resumed / "summary.json").unlink()
    for folder in (resumed / "checkpoints").glob("step-*"):
        if int(folder.name.removeprefix("step-")) > step:
            shutil.rmtree(folder)
    (resumed / "checkpoints" / "latest").write_text(f"step-{step:07d}\n")
    config = yaml.safe_load(two.read_text())
    config["train"]["output_dir"] = str(resumed)
    (tmp_path / "resumed.yaml").write_text(yaml.safe_dump(config))
    result = torchrun("train", str(tmp_path / "resumed.yaml"), "--resume", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return resumed


def test_lora_drop_resumed_in_two_processes_selects_as_the_uninterrupted_run(tiny_model_dir, addition_data,
                                                                             tmp_path):
    """The importance sums a checkpoint keeps are those of all processes (synced every step), so a
    two-process run resumed inside LoRA-drop's warm-up selects the layers the uninterrupted one did."""
    common = ("method.name=lora_drop", "method.lr_ratio=null", "method.dropout=0.0", "train.max_steps=4",
              "method.drop_warmup_steps=3", "method.drop_top_n=3", "train.eval_every=null", "train.save_every=1",
              "train.keep_checkpoints=5", "eval.metrics=[eval_loss]")
    two = train_one_and_two(tiny_model_dir, addition_data, tmp_path, common)
    config = lambda out: json.loads((out / "adapter" / "lorakit_adapter.json").read_text())  # noqa: E731
    resumed = resume_two_from(tmp_path, two, step=1)
    assert config(resumed)["shared"] == config(tmp_path / "two")["shared"] == config(tmp_path / "one")["shared"]
    b, c = load_file(tmp_path / "two" / ADAPTER), load_file(resumed / ADAPTER)
    for key in b:
        assert torch.equal(c[key], b[key]), key


@pytest.mark.parametrize("method,resumed", [("lora_plus", True), ("olora", False), ("dora", False), ("vera", True),
                                            ("delta_lora", True)])
def test_fsdp_in_two_processes_equals_one_and_resumes_exactly(method, resumed, tiny_model_dir, addition_data,
                                                              tmp_path):
    """train.fsdp: torch FSDP2 over 2 CPU processes (gloo) trains the adapter one process trains, saves
    it whole, and a run resumed from a sharded checkpoint ends where the uninterrupted one did (the
    resume for the methods with state beyond plain factors: LoRA+'s groups, VeRA's shared
    projections, Delta-LoRA's moved W; LoRA-FA's frozen A is LoRA+'s group mechanism again)."""
    common = (f"method.name={method}", "method.lr_ratio=null", "method.dropout=0.0", "train.max_steps=4",
              "train.eval_every=null", "train.save_every=2", "eval.metrics=[eval_loss]")
    two = train_one_and_two(tiny_model_dir, addition_data, tmp_path, common, "train.fsdp=true")
    a, b = load_file(tmp_path / "one" / ADAPTER), load_file(tmp_path / "two" / ADAPTER)
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # whole, not shards
    for key in a:  # to float rounding: the two processes sum the gradients in another order
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    if not resumed:
        return
    c = load_file(resume_two_from(tmp_path, two, step=2) / ADAPTER)  # as after a crash at step 2
    for key in b:
        assert torch.equal(c[key], b[key]), key


def test_fsdp_refuses_schedules_that_cannot_run_on_shards(tiny_model_dir, addition_data, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run",
                          "method.name=adalora", "method.lr_ratio=null", "train.max_steps=4", "train.fsdp=true")
    result = torchrun("train", str(config), "--quiet")
    assert result.returncode != 0
    assert "lorakit: error: schedule 'adalora' does not run on sharded parameters" in result.stderr


def test_adalora_phases_are_checked_against_the_step_count_before_the_model_loads(
        tiny_model_dir, addition_data, tmp_path, monkeypatch):
    import lorakit.train.loop as loop

    monkeypatch.setattr(loop, "load_base", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(lorakit.LorakitError, match=r"adalora_t_init \+ adalora_t_final must be < "
                                                    r"adalora_total_steps \(4\)"):
        run(tiny_model_dir, addition_data, tmp_path / "run", "method.name=adalora", "method.lr_ratio=null",
            "method.adalora_t_init=4", "train.max_steps=4")


def test_a_second_process_cannot_train_into_a_busy_folder(tiny_model_dir, addition_data, tmp_path):
    """While one process trains into output_dir, another is refused at once (one line, exit 2);
    the lock dies with its process, so a killed run never leaves the folder locked."""
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, out)
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from lorakit.io.lock import folder_lock\n"
        f"with folder_lock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = cli("train", str(config), "--quiet")
        assert second.returncode == 2 and f"(pid {holder.pid}) is writing to" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert cli("train", str(config), "--quiet", "train.max_steps=2").returncode == 0


def test_a_diverged_step_stops_the_run_and_keeps_the_last_checkpoint(tiny_model_dir, addition_data, tmp_path,
                                                                     monkeypatch):
    import lorakit.train.objectives as loop

    calls = []
    real = loop.token_loss

    def diverging(model, batch, logits=None):
        calls.append(1)
        loss = real(model, batch, logits)
        return loss * float("nan") if len(calls) > 8 else loss  # 2 micro-batches a step: step 5 diverges
    monkeypatch.setattr(loop, "token_loss", diverging)
    with pytest.raises(lorakit.LorakitError, match="training loss is nan at step 5: training diverged"):
        run(tiny_model_dir, addition_data, tmp_path / "run", "train.eval_every=null")
    last = latest_checkpoint(tmp_path / "run")
    assert last.name == "step-0000003"
    assert all(torch.isfinite(t).all() for t in load_file(last / "lorakit_adapter.safetensors").values())


def test_deepspeed_refuses_methods_that_act_around_the_step():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from lorakit.presets import resolve
    from lorakit.train.loop import _check_deepspeed

    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    _check_deepspeed(deepspeed, resolve("lora_plus"), fused=False)  # parameter groups only: fine
    for method, needle in [("lora_fa", "optimizer 'lora_fa' act"), ("weight_lora", "schedule 'weight_lora'")]:
        with pytest.raises(lorakit.LorakitError, match=needle):
            _check_deepspeed(deepspeed, resolve(method), fused=False)
    _check_deepspeed(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), resolve("lora_fa"), fused=True)
    with pytest.raises(lorakit.LorakitError, match="train.fused_adapters reads sibling layers' factors"):
        _check_deepspeed(deepspeed, resolve("lora"), fused=True)


def test_the_cli_summary_is_plain_utf8_text(tiny_model_dir, addition_data, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, tmp_path / "run", "train.max_steps=1",
                          "train.eval_every=null")
    assert main_exit(["train", str(config), "--quiet"]) == 0
    shown = capsys.readouterr().out
    assert "lora × olora × lora_plus × fixed" in shown and "\\u00d7" not in shown
    assert "lora × olora × lora_plus × fixed" in (tmp_path / "run" / "summary.json").read_text(encoding="utf-8")
