"""The ownership rule of every writing command (``lorakit.io.ownership``), as regression tests of
the bad-input sweep: each case asserts the exit code, the one-line message, and that the user's
files are unchanged, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.errors import LorakitError
from lorakit.io.ownership import MANIFEST, Legacy, Manifest, check_new_file, claim, replace_folder
from test_train import write_config


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, args: list[str], needle: str) -> str:
    """Run the CLI in-process: exit code 2 and one ``lorakit: error:`` line holding ``needle``."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorakit: error:") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, addition_data, tmp_path_factory) -> Path:
    """A finished two-step run (its folder), trained through the CLI."""
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root / "c.yaml", tiny_model_dir, addition_data, root / "run", "train.max_steps=2",
                          "train.eval_every=null", "eval.metrics=[eval_loss]")
    assert main(["train", str(config), "--quiet"]) == 0
    return root / "run"


# -- the rule itself ---------------------------------------------------------------------------
def test_claim_records_outputs_and_refuses_what_it_did_not_write(tmp_path):
    folder = tmp_path / "out"
    claim(folder, "eval", ["metrics.json"])
    assert Manifest.read(folder).files == {"metrics.json": "eval"}
    (folder / "metrics.json").write_text("{}")
    claim(folder, "eval", ["metrics.json"])  # its own file: fine, again and again
    with pytest.raises(LorakitError, match="metrics.json was written by lorakit eval"):
        claim(folder, "train", ["metrics.json"])
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(LorakitError, match="notes.txt was not written by lorakit eval.*--overwrite"):
        claim(folder, "eval", ["metrics.json"])
    claim(folder, "eval", ["metrics.json"], overwrite=True)
    assert Manifest.read(folder).kept == {"notes.txt"}
    claim(folder, "eval", ["metrics.json"])  # kept files no longer stop it, and are never its own
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_damaged_manifest_is_one_line(tmp_path):
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(LorakitError, match="is damaged"):
        claim(tmp_path, "eval", ["metrics.json"])


def test_no_output_lands_on_an_input(tmp_path):
    data = tmp_path / "metrics.json"
    data.write_text("mine")
    with pytest.raises(LorakitError, match="is an input of lorakit eval"):
        claim(tmp_path, "eval", ["metrics.json"], inputs=[data], overwrite=True)
    with pytest.raises(LorakitError, match="is an input of lorakit merge"):
        with replace_folder(tmp_path, "merge", inputs=[data], overwrite=True):
            pass
    with pytest.raises(LorakitError, match="is an input of lorakit generate"):
        check_new_file(data, "generate", "--out", inputs=[data], overwrite=True)
    assert data.read_text() == "mine"


def test_replace_folder_keeps_other_files_under_overwrite_and_drops_its_stale_ones(tmp_path):
    out = tmp_path / "m"
    with replace_folder(out, "merge") as tmp:
        (tmp / "a.safetensors").write_text("1")
        (tmp / "b.safetensors").write_text("1")
    (out / "README.md").write_text("mine")
    with pytest.raises(LorakitError, match="README.md was not written by lorakit merge"):
        with replace_folder(out, "merge"):
            raise AssertionError("the body must not run")
    with replace_folder(out, "merge", overwrite=True) as tmp:
        (tmp / "a.safetensors").write_text("2")
    assert sorted(os.listdir(out)) == [MANIFEST, "README.md", "a.safetensors"]
    assert (out / "a.safetensors").read_text() == "2" and (out / "README.md").read_text() == "mine"
    with replace_folder(out, "merge") as tmp:  # README.md is kept from now on, without --overwrite
        (tmp / "a.safetensors").write_text("3")
    assert (out / "README.md").read_text() == "mine" and (out / "a.safetensors").read_text() == "3"


def test_a_killed_write_leaves_no_temporary_for_long(tmp_path):
    """A temporary of a dead process (and a copy moved aside) is cleaned up by the next write."""
    out = tmp_path / "m"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".m.{dead}-abc.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    with replace_folder(out, "merge") as tmp:
        (tmp / "config.json").write_text("{}")
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ["m"]
    alive = tmp_path / f".m.{os.getpid()}-abc.tmp"  # a write in progress is left alone
    alive.mkdir()
    with replace_folder(out, "merge") as tmp:
        (tmp / "config.json").write_text("{}")
    assert alive.exists()


def test_legacy_merge_folder_keeps_its_users_files(tmp_path):
    """A merged folder of lorakit before manifests: its marker proves it, only what a merge
    writes is its own."""
    out = tmp_path / "m"
    out.mkdir()
    for name in ("lorakit_merge.json", "config.json", "model.safetensors", "README.md"):
        (out / name).write_text(name)
    legacy = Legacy("lorakit_merge.json", ("lorakit_merge.json", "config.json", "*.safetensors"))
    with pytest.raises(LorakitError, match="README.md was not written by lorakit merge"):
        with replace_folder(out, "merge", legacy=legacy):
            pass
    (out / "README.md").unlink()
    with replace_folder(out, "merge", legacy=legacy) as tmp:
        (tmp / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "new" and Manifest.read(out).files == {"config.json": "merge"}


# -- the six ways the sweep lost a user's files ------------------------------------------------
def test_merge_again_keeps_a_file_the_user_added(trained, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", str(trained / "adapter"), str(out)]) == 0
    (out / "README.md").write_text("my notes")
    before = snapshot(out)
    refused(capsys, ["merge", str(trained / "adapter"), str(out)], f"{out / 'README.md'} was not written by "
                                                                     "lorakit merge")
    assert snapshot(out) == before
    assert main(["merge", str(trained / "adapter"), str(out), "--overwrite"]) == 0
    assert (out / "README.md").read_text() == "my notes"


def test_train_into_a_project_folder_keeps_its_files(tiny_model_dir, addition_data, tmp_path, capsys,
                                                     monkeypatch):
    project = tmp_path / "myproj"
    project.mkdir()
    config = write_config(project / "config.yaml", tiny_model_dir, addition_data, Path("."), "train.max_steps=1")
    config.write_text("# my commented config\n" + config.read_text())
    (project / "summary.json").write_text('{"mine": true}\n')
    before = snapshot(project)
    monkeypatch.chdir(project)
    refused(capsys, ["train", "config.yaml"], "config.yaml is an input of lorakit train")
    refused(capsys, ["train", "config.yaml", "--overwrite"], "config.yaml is an input of lorakit train")
    (project / "config.yaml").rename(project / "run.yaml")
    refused(capsys, ["train", "run.yaml"], "run.yaml was not written by lorakit train")
    assert {k.replace("run.yaml", "config.yaml"): v for k, v in snapshot(project).items()} == before
    assert not (project / "metrics.jsonl").exists() and not (project / MANIFEST).exists()


def test_generate_never_writes_over_its_input_or_a_file_it_did_not_write(trained, tmp_path, capsys):
    config = trained / "config.yaml"
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"prompt": "Add 1 and 2.", "completion": "3"}) + "\n")
    before = questions.read_bytes()
    base = ["generate", str(config), "--adapter", str(trained / "adapter"), "--data", str(questions)]
    refused(capsys, [*base, "--out", str(questions)], "is an input of lorakit generate")
    refused(capsys, [*base, "--out", str(questions), "--overwrite"], "is an input of lorakit generate")
    assert questions.read_bytes() == before
    refused(capsys, [*base, "--out", str(tmp_path)], "is a folder; give the path of a file")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("mine\n")
    refused(capsys, [*base, "--out", str(answers)], "already exists; choose a new file, or pass --overwrite")
    assert answers.read_text() == "mine\n"
    assert main([*base, "--out", str(answers), "--overwrite"]) == 0
    assert json.loads(answers.read_text().splitlines()[0])["prediction"] is not None


def test_eval_out_keeps_earlier_files_it_did_not_write(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "metrics.json").write_text("mine")
    (out / "generations.jsonl").write_text("mine too")
    args = ["eval", str(trained / "config.yaml"), "--adapter", str(trained / "adapter"), "--out", str(out)]
    refused(capsys, args, "generations.jsonl was not written by lorakit eval")
    assert snapshot(out) == {"metrics.json": b"mine", "generations.jsonl": b"mine too"}
    fresh = tmp_path / "fresh"
    for _ in range(2):  # its own folder, written twice
        assert main([*args[:-1], str(fresh)]) == 0
    assert json.loads((fresh / "metrics.json").read_text())["eval_loss"] > 0
    refused(capsys, [*args[:-1], str(trained)], "was written by lorakit train")


def test_import_never_replaces_a_trained_adapter(trained, tmp_path, capsys):
    peft = tmp_path / "peft"
    assert main(["export", str(trained / "adapter"), str(peft)]) == 0
    for target in (trained / "adapter", trained):
        before = snapshot(target)
        refused(capsys, ["import", str(peft), str(target)], "lorakit import writes only into a new or empty folder")
        assert snapshot(target) == before
    refused(capsys, ["import", str(peft), str(peft)], "is an input of lorakit import")
    out = tmp_path / "imported"
    assert main(["import", str(peft), str(out)]) == 0
    assert main(["import", str(peft), str(out)]) == 0  # its own folder


def test_a_symlinked_lock_file_is_refused_not_followed(tiny_model_dir, addition_data, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("do not touch")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lorakit.lock").symlink_to(target)
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, out, "train.max_steps=1")
    refused(capsys, ["train", str(config)], ".lorakit.lock is a symbolic link")
    assert target.read_text() == "do not touch"
    (out / ".lorakit.lock").unlink()
    os.link(target, out / ".lorakit.lock")  # a hard link is refused too
    refused(capsys, ["train", str(config)], "is not a plain file of its own")
    assert target.read_text() == "do not touch"


def test_a_file_size_limit_during_merge_is_one_line(trained, tmp_path):
    """``ulimit -f``: the file system refuses the weights; one line naming the path, and nothing
    left behind."""
    out = tmp_path / "merged"
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
              "from lorakit.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "merge", str(trained / "adapter"), str(out)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"lorakit: error: cannot write {out}") and "ulimit -f" in lines[0], lines[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_file_size_limit_during_training_is_one_line(tiny_model_dir, addition_data, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, out, "train.max_steps=2",
                          "train.save_every=1", "train.eval_every=null")
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000)); "
              "from lorakit.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "train", str(config), "--quiet"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("lorakit: error: cannot write") and str(out) in lines[0], lines[0]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    shutil.rmtree(out)
