"""``--force`` replaces only what evim-deploy wrote (a bundle its manifest lists, a file or package carrying its
manifest), atomically: the old output survives an interrupted export, and the "already exists" check runs
again at the rename."""
from __future__ import annotations

import dataclasses
import json

import pytest

from evim_deploy import files
from evim_deploy.bundle import build_bundle
from evim_deploy.errors import UsageError
from evim_deploy.files import artifact_digest, staged_output
from evim_deploy.targets import TARGETS, export
from evim_deploy.testing import deploy_model, randomized_model

OWN = b'{"variant": "tiny", "evim_deploy_version": "0"}'  # what every file evim-deploy writes embeds


@pytest.fixture(scope="module")
def models():
    return randomized_model("tiny"), deploy_model("tiny", (64, 64))


def _bundle(models, out, precisions=("fp32",), force=False):
    return build_bundle(*models, out, targets=["onnx"], precisions=list(precisions), force=force)


def _listing(folder):
    """Every path under ``folder``: a staging folder left behind would show (its name starts with a dot)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _digests(folder):
    return {p: artifact_digest(folder / p) for p in _listing(folder)}


def _interrupting(spec, after=b"partial flatbuffer"):
    """``spec`` whose exporter writes part of its file, then meets Ctrl-C."""
    def exporter(model, output, **kwargs):
        output.write_bytes(after)
        raise KeyboardInterrupt
    return dataclasses.replace(spec, exporter=exporter)


# ---------------------------------------------------------------------------------------------- refusals
def test_force_keeps_a_thesis_in_the_output_folder(cli, tmp_path):
    out = tmp_path / "DIR"
    out.mkdir()
    (out / "thesis.tex").write_text("\\chapter{Results}")
    code, _, err = cli("export", "--target", "all", "--model", "tiny", "--precision", "fp32", "--output", out, "--force")
    assert code == 2 and "Traceback" not in err
    assert "holds thesis.tex, which evim-deploy did not write; choose another --output or move it" in " ".join(err.split())
    assert (out / "thesis.tex").read_text() == "\\chapter{Results}"
    assert _listing(tmp_path) == ["DIR", "DIR/thesis.tex"]  # nothing partial beside or inside it


def test_a_bundle_folder_with_a_foreign_file_is_refused_whole(models, tmp_path):
    """Refused rather than replacing only the bundle's own files: the replacement is one rename of the folder,
    which a user's file inside it would either block or be carried along by."""
    out = tmp_path / "bundle"
    _bundle(models, out)
    (out / "notes.txt").write_text("mine")
    before = _digests(tmp_path)
    with pytest.raises(UsageError, match="holds notes.txt, which evim-deploy did not write"):
        _bundle(models, out, force=True)
    assert _digests(tmp_path) == before


def test_force_refuses_a_file_that_carries_no_manifest(cli, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"someone else's model")
    code, _, err = cli("export", "--target", "onnx", "--model", "tiny", "--output", out, "--force", "--no-verify")
    assert code == 2 and "m.onnx carries no evim-deploy manifest" in " ".join(err.split())
    assert out.read_bytes() == b"someone else's model" and _listing(tmp_path) == ["m.onnx"]


def test_a_listed_model_replaced_by_a_user_file_is_foreign(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"evim_deploy_version": "0", "labels_file": "labels.txt",
                                                   "files": [{"file": "model-fp32.onnx"}]}))
    (out / "labels.txt").write_text("a\n")
    (out / "model-fp32.onnx").write_bytes(b"the user's own onnx")
    (out / ".DS_Store").write_bytes(b"")
    assert files.foreign(out, bundle=True) == "holds model-fp32.onnx, which evim-deploy did not write"
    (out / "model-fp32.onnx").write_bytes(OWN)
    assert files.foreign(out, bundle=True) is None


# ---------------------------------------------------------------------------------------------- replacing
def test_a_previous_bundle_is_replaced_not_merged(models, tmp_path):
    out = tmp_path / "bundle"
    _bundle(models, out, ["fp32"])
    with pytest.raises(UsageError, match="already exists"):
        _bundle(models, out, ["fp16"])
    _bundle(models, out, ["fp16"], force=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "golden", "labels.txt", "manifest.json",
                                                     "model-fp16.onnx"]
    assert [f["file"] for f in json.loads((out / "manifest.json").read_text())["files"]] == ["model-fp16.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left beside it


def test_a_previous_file_is_replaced_with_force(cli, tmp_path):
    out = tmp_path / "m.onnx"
    assert cli("export", "--target", "onnx", "--model", "tiny", "--seed", "1", "--output", out, "--no-verify")[0] == 0
    before = artifact_digest(out)
    code, _, err = cli("export", "--target", "onnx", "--model", "tiny", "--seed", "2", "--output", out, "--force",
                       "--no-verify")
    assert code == 0, err
    assert artifact_digest(out) != before and _listing(tmp_path) == ["m.onnx"]


# --------------------------------------------------------------------------------------------- interrupts
def test_ctrl_c_mid_export_leaves_the_old_file_byte_identical(cli, models, tmp_path, monkeypatch):
    out = export(models[1], "onnx", tmp_path / "m.onnx")
    before = out.read_bytes()
    monkeypatch.setitem(TARGETS, "onnx", _interrupting(TARGETS["onnx"]))
    code, _, err = cli("export", "--target", "onnx", "--model", "tiny", "--output", out, "--force")
    assert code == 130 and "interrupted" in err
    assert out.read_bytes() == before and _listing(tmp_path) == ["m.onnx"]


def test_ctrl_c_mid_bundle_leaves_the_old_bundle_byte_identical(models, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    _bundle(models, out)
    before = _digests(tmp_path)
    monkeypatch.setitem(TARGETS, "onnx", _interrupting(TARGETS["onnx"]))
    with pytest.raises(KeyboardInterrupt):
        _bundle(models, out, force=True)
    assert _digests(tmp_path) == before


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_ctrl_c_during_the_swap_puts_the_old_output_back(tmp_path, monkeypatch, kind):
    """The old output is moved aside before the new one is renamed in: Ctrl-C at that moment restores it."""
    out = tmp_path / "m.mlpackage"
    if kind == "folder":
        out.mkdir()
    (out / "model.mlmodel" if kind == "folder" else out).write_bytes(OWN)
    before = _digests(tmp_path)
    rename = files._rename_new
    calls = []

    def interrupted_once(src, dst):
        calls.append(src.name)
        if len(calls) == 1:
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(files, "_rename_new", interrupted_once)
    with pytest.raises(KeyboardInterrupt), staged_output(out, force=True) as staged:
        if kind == "folder":
            staged.mkdir()
        (staged / "model.mlmodel" if kind == "folder" else staged).write_bytes(OWN + b"new")
    assert calls == ["m.mlpackage", "m.mlpackage.previous"] and _digests(tmp_path) == before


# ------------------------------------------------------------------------------------ check at the rename
def test_a_file_that_appears_during_the_export_is_not_overwritten(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="already exists .it appeared while exporting"), staged_output(out) as staged:
        staged.write_bytes(OWN)
        out.write_bytes(b"written meanwhile")
    assert out.read_bytes() == b"written meanwhile" and _listing(tmp_path) == ["m.onnx"]


def test_a_file_dropped_into_the_bundle_during_the_export_is_refused(models, tmp_path):
    out = tmp_path / "bundle"
    _bundle(models, out)
    with pytest.raises(UsageError, match="holds thesis.tex"), staged_output(out, force=True, bundle=True) as staged:
        staged.mkdir()
        (out / "thesis.tex").write_text("draft")
    assert (out / "thesis.tex").read_text() == "draft" and (out / "model-fp32.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@pytest.mark.parametrize("links", [True, False])
def test_the_rename_itself_never_replaces(tmp_path, monkeypatch, links):
    """Past the last check, the rename refuses on its own: a hard link for a file (or, on file systems without
    them, a check just before), a folder rename for a folder."""
    if not links:
        monkeypatch.setattr(files.os, "link", lambda src, dst: (_ for _ in ()).throw(PermissionError(1, "no links")))
    (tmp_path / "new").write_bytes(b"new")
    (tmp_path / "theirs").write_bytes(b"theirs")
    (tmp_path / "new_dir").mkdir()
    (tmp_path / "their_dir").mkdir()
    (tmp_path / "their_dir" / "x").write_bytes(b"x")
    for src, dst in [("new", "theirs"), ("new", "their_dir"), ("new_dir", "theirs"), ("new_dir", "their_dir")]:
        with pytest.raises(FileExistsError):
            files._rename_new(tmp_path / src, tmp_path / dst)
    before = _digests(tmp_path)
    files._rename_new(tmp_path / "new", tmp_path / "m.onnx")
    assert _digests(tmp_path) == {("m.onnx" if p == "new" else p): d for p, d in before.items()}


def test_a_file_that_appears_at_the_last_moment_is_not_overwritten(tmp_path, monkeypatch):
    """Something appears after the check at the rename, before the rename: refused all the same."""
    out = tmp_path / "m.onnx"
    check = files.refuse_existing

    def then_appears(output, force, bundle=False, meanwhile=False):
        replacing = check(output, force, bundle, meanwhile)
        if meanwhile:
            out.write_bytes(b"written meanwhile")
        return replacing

    monkeypatch.setattr(files, "refuse_existing", then_appears)
    with pytest.raises(UsageError, match="already exists .it appeared while exporting"), staged_output(out) as staged:
        staged.write_bytes(OWN)
    assert out.read_bytes() == b"written meanwhile" and _listing(tmp_path) == ["m.onnx"]
