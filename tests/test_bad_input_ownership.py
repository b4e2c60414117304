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

from cli_lines import other_lines
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
    stale = tmp_path / f".m.lorakit-{dead}-abc.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    with replace_folder(out, "merge") as tmp:
        (tmp / "config.json").write_text("{}")
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ["m"]
    alive = tmp_path / f".m.lorakit-{os.getpid()}-abc.tmp"  # a write in progress is left alone
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
    lines = other_lines(result.stderr)  # after the status lines of loading and merging
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


# -- what a review of the rule found -----------------------------------------------------------
@pytest.mark.parametrize("name", ["/tmp", "..", "../x", "a/b", ""])
def test_a_manifest_naming_a_path_outside_its_folder_is_damaged(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    out = tmp_path / "shared"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"files": {name or "": "merge", str(victim): "merge"}, "kept": []}))
    with pytest.raises(LorakitError, match="is damaged"):
        with replace_folder(out, "merge"):
            pass
    assert (victim / "keep.txt").read_text() == "mine"


def test_merge_never_writes_over_the_base_model_it_reads(trained, tmp_path, capsys):
    """The adapter records its base: merging into that folder is writing onto an input."""
    base = Path(json.loads((trained / "adapter" / "lorakit_adapter.json").read_text())["base_model"])
    before = snapshot(base)
    for extra in ([], ["--overwrite"]):
        refused(capsys, ["merge", str(trained / "adapter"), str(base), *extra], "is an input of lorakit merge")
        refused(capsys, ["export", str(trained / "adapter"), str(base), *extra], "is an input of lorakit export")
    assert snapshot(base) == before


def test_a_runs_folder_alone_does_not_make_a_comparison(tmp_path):
    """TensorBoard and Trainer write ``runs/`` too: only a lorakit run folder proves a comparison."""
    from lorakit.experiments.compare import COMPARE_LEGACY, COMPARE_OUTPUTS

    (tmp_path / "runs" / "Dec06_12-00-00_host").mkdir(parents=True)
    (tmp_path / "report.md").write_text("my report")
    with pytest.raises(LorakitError, match="report.md was not written by lorakit compare"):
        claim(tmp_path, "compare", COMPARE_OUTPUTS, legacy=COMPARE_LEGACY)
    shutil.rmtree(tmp_path / "runs" / "Dec06_12-00-00_host")
    (tmp_path / "report.md").unlink()
    (tmp_path / "runs" / "lora" / "seed-0").mkdir(parents=True)
    (tmp_path / "runs" / "lora" / "seed-0" / "config.yaml").write_text("train: {}\n")
    (tmp_path / "report.md").write_text("written by an older lorakit")
    claim(tmp_path, "compare", COMPARE_OUTPUTS, legacy=COMPARE_LEGACY)
    assert Manifest.read(tmp_path).owned_by("compare") >= {"runs", "report.md"}


def test_a_legacy_merge_adopts_exact_names_only(tmp_path):
    from lorakit.cli import _merge_legacy

    out = tmp_path / "m"
    out.mkdir()
    for name in ("lorakit_merge.json", "model.safetensors", "model-before-my-edit.safetensors",
                 "tokenizer_NOTES.txt"):
        (out / name).write_text(name)
    with pytest.raises(LorakitError, match="model-before-my-edit.safetensors was not written by lorakit merge"):
        with replace_folder(out, "merge", legacy=_merge_legacy()):
            pass


def test_a_kept_file_is_replaced_only_under_overwrite(tmp_path):
    """``--overwrite`` once keeps a user's file; a later command that would write that name still
    needs ``--overwrite``."""
    (tmp_path / "config.yaml").write_text("mine")
    claim(tmp_path, "eval", ["metrics.json"], overwrite=True)
    assert Manifest.read(tmp_path).kept == {"config.yaml"}
    with pytest.raises(LorakitError, match="config.yaml was not written by lorakit train"):
        claim(tmp_path, "train", ["config.yaml", "metrics.json"])
    out = tmp_path / "m"
    with replace_folder(out, "merge") as tmp:
        (tmp / "config.json").write_text("1")
    (out / "README.md").write_text("mine")
    with replace_folder(out, "merge", overwrite=True) as tmp:
        (tmp / "config.json").write_text("2")
    with pytest.raises(LorakitError, match="README.md was not written by lorakit merge"):
        with replace_folder(out, "merge") as tmp:
            (tmp / "README.md").write_text("generated")
    assert (out / "README.md").read_text() == "mine"


def test_a_users_old_copies_are_not_lorakits(tmp_path):
    """Only temporaries of lorakit's own form are cleaned up: a user's ``.name.old`` beside an
    output or a ``.x.old`` inside one stays."""
    (tmp_path / ".merged.old").mkdir()
    (tmp_path / ".merged.old" / "README.md").write_text("my backup")
    (tmp_path / ".merged.123-mine.tmp").write_text("mine too")
    with replace_folder(tmp_path / "merged", "merge") as tmp:
        (tmp / "config.json").write_text("{}")
    with replace_folder(tmp_path / "merged", "merge") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (tmp_path / ".merged.old" / "README.md").read_text() == "my backup"
    assert (tmp_path / ".merged.123-mine.tmp").read_text() == "mine too"


def test_a_move_aside_caught_by_a_kill_is_put_back(tmp_path):
    """Killed between moving the old folder aside and renaming the new one in: the next write of
    that name restores the old folder first."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    old = tmp_path / f".m.lorakit-{dead}-abcd.old"
    old.mkdir()
    (old / "config.json").write_text("the previous merge")
    (old / MANIFEST).write_text(json.dumps({"files": {"config.json": "merge"}, "kept": []}))
    with replace_folder(tmp_path / "m", "merge") as tmp:  # restored first, then replaced as its own
        assert (tmp_path / "m" / "config.json").read_text() == "the previous merge" and not old.exists()
        (tmp / "config.json").write_text("this merge")
    assert (tmp_path / "m" / "config.json").read_text() == "this merge"


def test_no_output_inside_an_input_folder(trained, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"prompt": "Add 1 and 2."}) + "\n")
    weights = trained / "adapter" / "lorakit_adapter.safetensors"
    before = weights.read_bytes()
    refused(capsys, ["generate", str(trained / "config.yaml"), "--adapter", str(trained / "adapter"), "--data",
                     str(questions), "--out", str(weights), "--overwrite"], "an input of lorakit generate")
    assert weights.read_bytes() == before
    refused(capsys, ["merge", str(trained / "adapter"), str(trained / "adapter" / "merged")],
            "an input of lorakit merge, which never writes into its inputs")
    refused(capsys, ["merge", str(trained / "adapter"), str(questions / "x")], "is a file, so lorakit merge")


def test_overwrite_replaces_a_users_log_and_never_follows_a_link(tiny_model_dir, addition_data, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(victim)
    (out / "notes.txt").write_text("mine")
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, out, "train.max_steps=2",
                          "train.eval_every=null", "eval.metrics=[eval_loss]")
    assert main(["train", str(config), "--quiet", "--overwrite"]) == 0
    assert victim.read_text() == "do not touch\n" and (out / "notes.txt").read_text() == "mine"
    assert not (out / "metrics.jsonl").is_symlink()
    assert all("step" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())


def test_checkpoint_pruning_keeps_a_users_step_folder(tiny_model_dir, addition_data, tmp_path):
    from lorakit.train.checkpoint import latest_checkpoint

    out = tmp_path / "run"
    (out / "checkpoints" / "step-backup").mkdir(parents=True)
    (out / "checkpoints" / "step-backup" / "notes.txt").write_text("mine")
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, addition_data, out, "train.max_steps=3",
                          "train.save_every=1", "train.keep_checkpoints=1", "train.eval_every=null",
                          "eval.metrics=[eval_loss]")
    assert main(["train", str(config), "--quiet", "--overwrite", "--resume"]) == 0  # (no run to resume yet)
    assert (out / "checkpoints" / "step-backup" / "notes.txt").read_text() == "mine"
    assert latest_checkpoint(out).name == "step-0000003"


def test_merge_into_dot_and_through_a_link(trained, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["merge", str(trained / "adapter"), "."]) == 0
    assert (here / "config.json").is_file() and Manifest.read(here).owned_by("merge")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert main(["merge", str(trained / "adapter"), str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (real / "config.json").is_file()


def test_lorakits_own_temporaries_never_block_a_write(tmp_path):
    """A temporary left inside a folder by a killed write (here the manifest's) is lorakit's, not a
    user's file: a later whole-folder write replaces the folder; a user's ``.lorakit-notes`` is refused."""
    out = tmp_path / "m"
    with replace_folder(out, "merge") as tmp:
        (tmp / "config.json").write_text("1")
    (out / f".{MANIFEST}.lorakit-999999-x.tmp").write_text("{")
    with replace_folder(out, "merge") as tmp:
        (tmp / "config.json").write_text("2")
    assert (out / "config.json").read_text() == "2"
    (out / ".lorakit-notes").write_text("mine")
    with pytest.raises(LorakitError, match="lorakit-notes was not written by lorakit merge"):
        with replace_folder(out, "merge"):
            pass
