"""Bad input to ``lorakit compare`` that used to make a report lie with exit code 0: a re-run into
the same output_dir with another config reusing the old runs (and the old base-model row), and two
runs whose names map to one folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.experiments import compare as compare_module
from lorakit.experiments.compare import run_compare
from lorakit.experiments.spec import load_compare_config
from test_compare import compare_raw


def small_raw(model_dir: Path, data: Path, out: Path) -> dict:
    """One run (lora), one seed, two steps, eval loss only: a comparison of a few seconds."""
    raw = compare_raw(model_dir, data, out)
    raw["eval"] = {"metrics": ["eval_loss"]}
    raw["train"]["max_steps"] = 2
    raw["compare"].update(runs=["lora"], seeds=[0])
    return raw


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, addition_data) -> Path:
    """The output_dir of a finished small comparison (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "cmp"
    run_compare(*load_compare_config(small_raw(tiny_model_dir, addition_data, out)), progress=False)
    return out


@pytest.fixture
def earlier(finished, tmp_path) -> Path:
    """This test's copy of the finished comparison."""
    return Path(shutil.copytree(finished, tmp_path / "cmp"))


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a model loads or a run trains."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or a run trained")
    monkeypatch.setattr(compare_module, "load_base", refuse)
    monkeypatch.setattr(compare_module, "train", refuse)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``, with a file's bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def compare_cli(tmp_path: Path, raw: dict) -> int:
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return main(["compare", str(path), "--quiet"])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorakit: error: ") and "Traceback" not in err, err
    return lines[0]


def other_data(tmp_path: Path) -> Path:
    path = tmp_path / "other.json"
    path.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": f"{i}."} for i in range(64)]))
    return path


SEED_0 = Path("runs") / "lora" / "seed-0"


@pytest.mark.parametrize("edit,difference", [
    (lambda raw, tmp: raw["train"].update(lr=1e-3), "train.lr=0.005, this comparison asks for 0.001"),
    (lambda raw, tmp: (raw["train"].update(lr=1e-3), raw["data"].update(path=str(other_data(tmp)))),
     "data.path={data}, this comparison asks for {tmp}/other.json"),
    (lambda raw, tmp: raw["method"].update(rank=8), "method.rank=4, this comparison asks for 8"),
    (lambda raw, tmp: raw["compare"].update(runs=[{"method": "lora", "name": "lora", "train": {"warmup_steps": 1}}]),
     "train.warmup_steps=0, this comparison asks for 1"),
])
def test_a_changed_config_is_refused_before_anything_loads(edit, difference, earlier, tiny_model_dir, addition_data,
                                                          tmp_path, capsys, nothing_loads):
    raw = small_raw(tiny_model_dir, addition_data, earlier)
    raw["compare"]["seeds"] = [0, 1]  # a run not made yet is not made either
    edit(raw, tmp_path)
    before = snapshot(earlier / "runs")
    assert compare_cli(tmp_path, raw) == 2
    line = one_error_line(capsys)
    expected = difference.format(data=addition_data, tmp=tmp_path)
    assert line == (f"lorakit: error: {earlier / SEED_0} was trained with {expected}; pass --rerun-changed to train "
                    "it again, or choose another compare.output_dir")
    assert snapshot(earlier / "runs") == before


def test_an_interrupted_run_is_checked_against_its_checkpoint(earlier, tiny_model_dir, addition_data, tmp_path,
                                                              capsys, nothing_loads):
    """A run without summary.json and without config.yaml (an older lorakit): its checkpoint's config."""
    (earlier / SEED_0 / "summary.json").unlink()
    (earlier / SEED_0 / "config.yaml").unlink()
    raw = small_raw(tiny_model_dir, addition_data, earlier)
    raw["train"]["lr"] = 1e-3
    before = snapshot(earlier / "runs")
    assert compare_cli(tmp_path, raw) == 2
    assert f"{earlier / SEED_0} was trained with train.lr=0.005, this comparison asks for 0.001" in \
        one_error_line(capsys)
    assert snapshot(earlier / "runs") == before


def test_a_run_without_a_recorded_config_is_refused(earlier, tiny_model_dir, addition_data, tmp_path, capsys,
                                                    nothing_loads):
    (earlier / SEED_0 / "config.yaml").unlink()
    shutil.rmtree(earlier / SEED_0 / "checkpoints")
    before = snapshot(earlier / "runs")
    assert compare_cli(tmp_path, small_raw(tiny_model_dir, addition_data, earlier)) == 2
    assert one_error_line(capsys) == (
        f"lorakit: error: {earlier / SEED_0} holds a run without a readable config (config.yaml or a checkpoint's), "
        "so it cannot be checked against this comparison; pass --rerun-changed to train it again, or choose another "
        "compare.output_dir")
    assert snapshot(earlier / "runs") == before


def test_rerun_changed_trains_the_changed_runs_again(earlier, tiny_model_dir, addition_data):
    raw = small_raw(tiny_model_dir, addition_data, earlier)
    raw["train"]["lr"] = 1e-3
    old_summary = (earlier / SEED_0 / "summary.json").read_text()
    run_compare(*load_compare_config(raw), progress=False, rerun_changed=True)
    assert yaml.safe_load((earlier / SEED_0 / "config.yaml").read_text())["train"]["lr"] == 1e-3
    assert (earlier / SEED_0 / "summary.json").read_text() != old_summary
    rows = json.loads((earlier / "results.json").read_text())["rows"]
    assert [(r["run"], r.get("lr"), r["status"]) for r in rows] == [("base model", None, "ok"), ("lora", 1e-3, "ok")]


def test_rerun_changed_removes_only_lorakit_run_folders(tiny_model_dir, addition_data, tmp_path, nothing_loads):
    out = tmp_path / "cmp"
    (out / SEED_0).mkdir(parents=True)
    (out / SEED_0 / "summary.json").write_text("{}\n")  # something else's folder
    before = snapshot(out)
    with pytest.raises(LorakitError, match=f"^{out / SEED_0 / 'summary.json'} was not written by lorakit train, "
                                           "so --rerun-changed does not remove"):
        run_compare(*load_compare_config(small_raw(tiny_model_dir, addition_data, out)), progress=False,
                    rerun_changed=True)
    assert snapshot(out) == before


@pytest.mark.parametrize("overrides", [
    [],  # the same config
    ["train.log_every=1", "train.save_every=1", "train.eval_every=1", "train.keep_checkpoints=5",
     "eval.max_new_tokens=4", "eval.generate_batch_size=2"],  # keys free on resume
])
def test_an_unchanged_config_skips_the_finished_runs(overrides, earlier, tiny_model_dir, addition_data, tmp_path,
                                                     capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(compare_module, "train", no_training)
    run_before = snapshot(earlier / SEED_0)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(small_raw(tiny_model_dir, addition_data, earlier)))
    assert main(["compare", str(path), "--quiet", *overrides]) == 0
    assert snapshot(earlier / SEED_0) == run_before
    assert "report:" in capsys.readouterr().out


def test_the_base_model_row_follows_the_eval_settings(earlier, tiny_model_dir, addition_data, tmp_path, capsys,
                                                      monkeypatch):
    """The cached base-model row is scored again when what it depends on changed, or its cache
    does not say what it was scored with; the finished runs are reused all the same."""
    monkeypatch.setattr(compare_module, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    (earlier / "base_model" / "metrics.json").write_text('{"eval_loss": 123.0}\n')
    (earlier / "base_model" / "computed_with.json").unlink()  # as an older lorakit left it
    raw = small_raw(tiny_model_dir, addition_data, earlier)
    assert compare_cli(tmp_path, raw) == 0
    rows = json.loads((earlier / "results.json").read_text())["rows"]
    assert rows[0]["run"] == "base model" and rows[0]["eval_loss"] != 123.0
    raw["eval"]["metrics"] = ["eval_loss", "eval_ppl"]
    assert compare_cli(tmp_path, raw) == 0
    base_row = json.loads((earlier / "results.json").read_text())["rows"][0]
    assert base_row["eval_ppl"] is not None and base_row["eval_loss"] == rows[0]["eval_loss"]


@pytest.mark.parametrize("names,needle", [
    (["x y", "x_y"], "compare.runs 'x y' and 'x_y' would share the folder {out}/runs/x_y"),
    (["Lora", "lora"], "compare.runs 'Lora' and 'lora' would share the folder {out}/runs/Lora"),
    (["a/b", "a:b"], "compare.runs 'a/b' and 'a:b' would share the folder {out}/runs/a_b"),
    (["!!!"], "compare.runs name '!!!' leaves no folder name"),
    ([".."], "compare.runs name '..' leaves no folder name"),
])
def test_runs_sharing_a_folder_are_refused_when_the_config_is_read(names, needle, tiny_model_dir, addition_data,
                                                                   tmp_path, capsys, nothing_loads):
    out = tmp_path / "cmp"
    raw = small_raw(tiny_model_dir, addition_data, out)
    raw["compare"]["runs"] = [{"method": "lora", "name": name} for name in names]
    assert compare_cli(tmp_path, raw) == 2
    assert needle.format(out=out) in one_error_line(capsys)
    assert not out.exists()


def test_rerun_changed_never_removes_a_file_a_user_put_in_a_run_folder(earlier, tiny_model_dir, addition_data,
                                                                       nothing_loads):
    (earlier / SEED_0 / "analysis.ipynb").write_text("my notes")
    raw = small_raw(tiny_model_dir, addition_data, earlier)
    raw["train"]["lr"] = 1e-3
    before = snapshot(earlier / "runs")
    with pytest.raises(LorakitError, match="analysis.ipynb was not written by lorakit train, so --rerun-changed"):
        run_compare(*load_compare_config(raw), progress=False, rerun_changed=True)
    assert snapshot(earlier / "runs") == before


def test_a_users_file_in_a_run_folder_is_refused_before_loading_unless_overwrite(earlier, tiny_model_dir,
                                                                                  addition_data, monkeypatch):
    """Every run folder is claimed before the model loads; ``overwrite`` reaches the run folders."""
    class Loaded(Exception):
        pass

    def loaded(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(compare_module, "load_base", loaded)
    (earlier / SEED_0 / "notes.txt").write_text("mine")
    raw = small_raw(tiny_model_dir, addition_data, earlier)
    with pytest.raises(LorakitError, match="notes.txt was not written by lorakit train"):
        run_compare(*load_compare_config(raw), progress=False)
    with pytest.raises(Loaded):
        run_compare(*load_compare_config(raw), progress=False, overwrite=True)
    assert (earlier / SEED_0 / "notes.txt").read_text() == "mine"
