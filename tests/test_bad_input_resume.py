"""Resuming damaged checkpoints, finished runs and runs killed after their final checkpoint, as a
user does it (``lorakit train cfg --resume``), on the tiny model: a 6-step run saved every 2 steps
(``full``) and the same run cut at step 5, whose latest checkpoint is step 4 (``cut``)."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.cli import main
from lorakit.config import load_config
from lorakit.train import train
from lorakit.train.checkpoint import CHECKSUMS_FILE
from test_train import metrics, overrides, tensorboard_scalars, write_config

EXTRA = ("train.max_steps=6", "train.save_every=2", "train.eval_every=null")
TIMING = ("seconds", "phase_seconds", "seconds_per_step", "peak_memory_mib")  # what another invocation measures anew
STEP2, STEP4 = "checkpoints/step-0000002", "checkpoints/step-0000004"
SAFETENSORS = "lorakit_adapter.safetensors"


class Crash(RuntimeError):
    pass


def config_file(model_dir: Path, data: Path, out: Path, *extra: str) -> str:
    return str(write_config(out.parent / f"{out.name}.yaml", model_dir, data, out, *EXTRA, *extra))


def train_api(model_dir: Path, data: Path, out: Path, *extra: str, resume: bool = False, callbacks=()) -> dict:
    config = load_config(None, overrides(model_dir, data, out, *EXTRA, *extra))
    return train(config, resume=resume, callbacks=callbacks, progress=False)


def crash_after_step_5(info) -> None:
    if info.step == 5:
        raise Crash("simulated kill after step 5")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, addition_data, tmp_path_factory) -> Path:
    """``full``: the uninterrupted run; ``cut``: the run killed after step 5 (checkpoints 2 and 4)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", config_file(tiny_model_dir, addition_data, root / "full"), "--quiet"]) == 0
    with pytest.raises(Crash):
        train_api(tiny_model_dir, addition_data, root / "cut", callbacks=[crash_after_step_5])
    assert (root / "cut" / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    return root


def copy_of(runs: Path, name: str, tmp_path: Path) -> Path:
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def resume(model_dir: Path, data: Path, out: Path, capsys, *extra: str) -> tuple[int, list[str], str]:
    """``lorakit train <cfg> --resume --quiet`` into ``out``: exit code, stderr lines, stdout."""
    args = ["train", config_file(model_dir, data, out, *extra), "--resume", "--quiet"]
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def strict_json(text: str):
    """JSON as strict readers take it: NaN and Infinity are refused."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def summary(out: Path, *left_out: str) -> dict:
    return {k: v for k, v in strict_json((out / "summary.json").read_text()).items() if k not in left_out}


def without_elapsed(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in metrics(out)]


def assert_same_outputs(out: Path, full: Path) -> None:
    """The adapter bytes, the log and the summary of ``out`` are the uninterrupted run's (less
    what another invocation measures anew, and the output folder's own path)."""
    assert files(out / "adapter") == files(full / "adapter")
    assert without_elapsed(out) == without_elapsed(full)
    assert summary(out, *TIMING, "adapter") == summary(full, *TIMING, "adapter")


# -- damaged checkpoints ------------------------------------------------------------------------
def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def perturb_a_float(path: Path) -> None:
    """Make the first float of the first tensor huge, inside its data region: the file still parses."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    name, entry = next((k, v) for k, v in sorted(header.items()) if k != "__metadata__")
    assert entry["dtype"] == "F32"
    before = load_file(str(path))[name].clone()  # (a view of the mapped file otherwise)
    data[8 + header_len + entry["data_offsets"][0] + 3] ^= 0x40  # the exponent's high bits
    path.write_bytes(bytes(data))
    assert not torch.equal(load_file(str(path))[name], before)


DAMAGED = "is damaged (its checksum differs from the one recorded when it was written)"
RESUME_FROM_2 = "resume from step-0000002 by writing 'step-0000002' into {out}/checkpoints/latest"
START_OVER = "start over in a new train.output_dir"
DAMAGES = {
    "optimizer state bit flip": (lambda out: flip_byte(out / STEP4 / "training_state.pt"),
                                 f"{{out}}/{STEP4}/training_state.pt {DAMAGED}; {RESUME_FROM_2}, or {START_OVER}"),
    "adapter float perturbed": (lambda out: perturb_a_float(out / STEP4 / SAFETENSORS),
                                f"{{out}}/{STEP4}/{SAFETENSORS} {DAMAGED}; {RESUME_FROM_2}, or {START_OVER}"),
    "trainer state truncated": (lambda out: (out / STEP4 / "trainer_state.json").write_text("{"),
                                f"{{out}}/{STEP4}/trainer_state.json is damaged (its size differs from the one "
                                f"recorded when it was written); {RESUME_FROM_2}, or {START_OVER}"),
    "optimizer state missing": (lambda out: (out / STEP4 / "training_state.pt").unlink(),
                                f"{{out}}/{STEP4}/training_state.pt is missing (the checkpoint's checksums.json "
                                f"lists it); {RESUME_FROM_2}, or {START_OVER}"),
    "checksums unreadable": (lambda out: (out / STEP4 / CHECKSUMS_FILE).write_text("[]"),
                             f"{{out}}/{STEP4}/checksums.json is damaged (it is not the checksum list lorakit "
                             f"writes); {RESUME_FROM_2}, or {START_OVER}"),
    "both checkpoints damaged": (lambda out: (flip_byte(out / STEP4 / "training_state.pt"),
                                              perturb_a_float(out / STEP2 / SAFETENSORS)),
                                 f"{{out}}/{STEP4}/training_state.pt {DAMAGED}; no earlier checkpoint is left to "
                                 f"resume, so {START_OVER}"),
    "latest names no folder": (lambda out: (out / "checkpoints" / "latest").write_text("step-0000009\n"),
                               f"{{out}}/checkpoints/latest names 'step-0000009', which is not a checkpoint folder "
                               f"there; resume from step-0000004 by writing 'step-0000004' into "
                               f"{{out}}/checkpoints/latest, or {START_OVER}"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_checkpoint_is_refused_naming_the_file(case, runs, tiny_model_dir, addition_data, tmp_path,
                                                         capsys):
    """Exit 2, one line naming the damaged file and the newest earlier checkpoint that verifies,
    before anything is written: the output folder keeps every byte."""
    out = copy_of(runs, "cut", tmp_path)
    damage, message = DAMAGES[case]
    damage(out)
    before = files(out)
    code, err, _ = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 2 and err == [f"lorakit: error: {message.format(out=out)}"]
    assert files(out) == before


def test_the_advised_earlier_checkpoint_resumes_to_the_uninterrupted_run(runs, tiny_model_dir, addition_data,
                                                                         tmp_path, capsys):
    out = copy_of(runs, "cut", tmp_path)
    flip_byte(out / STEP4 / "training_state.pt")
    code, err, _ = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 2 and "resume from step-0000002 by writing 'step-0000002' into" in err[0]
    (out / "checkpoints" / "latest").write_text("step-0000002\n")  # as the message says
    code, err, _ = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 0, err
    assert_same_outputs(out, runs / "full")


def test_a_checkpoint_from_before_checksums_still_resumes(runs, tiny_model_dir, addition_data, tmp_path, capsys):
    out = copy_of(runs, "cut", tmp_path)
    for folder in (out / "checkpoints").glob("step-*"):
        (folder / CHECKSUMS_FILE).unlink()
    code, err, _ = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 0
    assert err == [f"lorakit: note: {out / STEP4} has no checksums (an older lorakit wrote it); resuming it "
                   "unverified"]
    assert_same_outputs(out, runs / "full")


@pytest.mark.parametrize("start,said", [
    ("fresh", "no checkpoint was written yet"),
    ("verified", "the last checkpoint, step-0000004, is intact"),
    ("legacy", "step-0000004, the checkpoint this run resumed from, has no checksums to verify it, and a damaged "
               "file there would also do this"),
])
def test_a_diverged_step_calls_the_checkpoint_intact_only_where_known(start, said, runs, tiny_model_dir,
                                                                      addition_data, tmp_path, monkeypatch):
    import lorakit.train.objectives as objectives

    real = objectives.token_loss
    monkeypatch.setattr(objectives, "token_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp_path / "fresh" if start == "fresh" else copy_of(runs, "cut", tmp_path)
    if start == "legacy":
        (out / STEP4 / CHECKSUMS_FILE).unlink()
    with pytest.raises(lorakit.LorakitError) as info:
        train_api(tiny_model_dir, addition_data, out, resume=start != "fresh")
    step = 1 if start == "fresh" else 5
    assert str(info.value) == (
        f"the training loss is nan at step {step}: training diverged (learning rate too high, or a float16 "
        f"overflow); this step was not applied and {said}; lower train.lr and start over in a new "
        "train.output_dir (a resumed run keeps the config, so it would diverge here again)")


# -- finished runs and the kill points after the final checkpoint ------------------------------
def test_resuming_a_finished_run_changes_nothing(runs, tiny_model_dir, addition_data, tmp_path, capsys):
    out = copy_of(runs, "full", tmp_path)
    before = files(out)
    code, err, stdout = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 0 and err == [f"lorakit: {out} holds a finished run (step 6 of 6); nothing to resume"]
    assert json.loads(stdout) == summary(out)
    assert files(out) == before


def unwrite(out: Path, what: str) -> None:
    """Undo one output of a finished run, as if the run had been killed before writing it."""
    if what == "final record":
        lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
        (out / "metrics.jsonl").write_text("".join(lines[:-1]))
    elif what == "adapter":
        shutil.rmtree(out / "adapter")
    else:
        (out / what).unlink()


KILLED_AFTER_FINAL_CHECKPOINT = {  # what is still unwritten at each kill point, in the order written
    "before the final record": (("final record", "adapter", "summary.json"),
                                "final metrics.jsonl record, adapter/, summary.json"),
    "before the adapter": (("adapter", "summary.json"), "adapter/, summary.json"),
    "before summary.json": (("summary.json",), "summary.json"),
}


@pytest.mark.parametrize("kill", list(KILLED_AFTER_FINAL_CHECKPOINT))
def test_a_run_killed_after_its_final_checkpoint_resumes_to_the_same_bytes(kill, runs, tiny_model_dir,
                                                                           addition_data, tmp_path, capsys):
    """The finished run's outputs are written again from its final checkpoint: the log, the
    adapter and the summary (timings included) are byte for byte the uninterrupted run's."""
    out = copy_of(runs, "full", tmp_path)
    before = files(out)
    unwritten, named = KILLED_AFTER_FINAL_CHECKPOINT[kill]
    for what in unwritten:
        unwrite(out, what)
    code, err, stdout = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 0
    assert err == [f"lorakit: {out} holds a finished run (step 6 of 6); writing its {named} from the final checkpoint"]
    after = files(out)
    for name in ("summary.json", "metrics.jsonl", f"adapter/{SAFETENSORS}", "adapter/lorakit_adapter.json"):
        assert after[name] == before[name], name
    assert json.loads(stdout) == summary(out)


def test_a_real_kill_after_the_final_checkpoint_resumes_without_a_second_evaluation(
        runs, tiny_model_dir, addition_data, tmp_path, capsys, monkeypatch):
    """Killed as the run starts writing its outputs: the resume loads no model, logs the final
    record once (to TensorBoard too) and writes the summary the final checkpoint recorded."""
    import lorakit.train.loop as loop

    def killed(*args) -> None:
        raise Crash("killed after the final checkpoint")

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "publish", killed)
        with pytest.raises(Crash):
            train_api(tiny_model_dir, addition_data, out)
    assert not (out / "summary.json").exists() and not (out / "adapter").exists()
    recorded = strict_json((out / "checkpoints" / "step-0000006" / "trainer_state.json").read_text())["final"]
    monkeypatch.setattr(loop, "load_base", lambda *a: pytest.fail("the model was loaded"))
    code, _, _ = resume(tiny_model_dir, addition_data, out, capsys)
    assert code == 0
    assert_same_outputs(out, runs / "full")
    assert summary(out) == recorded["summary"]
    assert tensorboard_scalars(out) == tensorboard_scalars(runs / "full")


# -- JSON without NaN ----------------------------------------------------------------------------
def test_non_finite_metrics_are_written_as_null(tiny_model_dir, addition_data, tmp_path, capsys, monkeypatch):
    import lorakit.train.loop as loop

    real = loop.final_evaluation
    monkeypatch.setattr(loop, "final_evaluation", lambda *a: {**real(*a), "eval_loss": math.nan, "bleu": math.inf})
    out = tmp_path / "run"
    returned = train_api(tiny_model_dir, addition_data, out, "train.max_steps=2")
    assert returned["eval_loss"] is None and summary(out)["bleu"] is None
    assert strict_json((out / "metrics.jsonl").read_text().splitlines()[-1])["eval_loss"] is None
    for folder in (out / "checkpoints").glob("step-*"):
        strict_json((folder / "trainer_state.json").read_text())
        strict_json((folder / CHECKSUMS_FILE).read_text())
    before = files(out)
    code, err, stdout = resume(tiny_model_dir, addition_data, out, capsys, "train.max_steps=2")
    assert code == 0 and "nothing to resume" in err[0] and strict_json(stdout)["eval_loss"] is None
    assert files(out) == before
