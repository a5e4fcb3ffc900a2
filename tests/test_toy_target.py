"""A fifth target, TorchScript, added without touching any package file: its three roles (format, export,
runtime) and its table row live in this one test module. Registered in the table, it passes the same target
contract as the shipped targets and works through the CLI (export, verify, predict) and the bench planner.

This is the redesign's claim, tested: adding a target is one module per role and one row, nothing else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evim_deploy.export import artifact_manifest
from evim_deploy.formats import MANIFEST_KEY, FileSummary, op_histogram
from evim_deploy.manifest import Manifest
from evim_deploy.runtime import Runtime
from evim_deploy.samples import sample_images
from evim_deploy.targets import TARGETS, TargetSpec
from evim_deploy.testing import contract
from evim_deploy.testing.train_fixture import CHECKPOINT, LABELS_FILE

NAME = "torchscript"


# ---------------------------------------------------------------------------------------- format role
def read_archive(path: str | Path) -> tuple[torch.jit.ScriptModule, Manifest]:
    extra = {MANIFEST_KEY: ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    return module, Manifest.from_json(extra[MANIFEST_KEY])


def summary(path: str | Path) -> FileSummary:
    module, _ = read_archive(path)
    kinds = [node.kind().split("::")[-1] for node in module.inlined_graph.nodes() if node.kind().startswith("aten::")]
    return FileSummary(op_histogram(kinds), len(kinds), Path(path).stat().st_size, "aten ops")


# ---------------------------------------------------------------------------------------- export role
def export_torchscript(model: torch.nn.Module, output: Path, precision: str = "fp32", **_: Any) -> Path:
    traced = torch.jit.trace(model.eval(), torch.zeros(1, 3, *model.input_size))
    manifest = artifact_manifest(model, NAME, precision)
    torch.jit.save(traced, str(output), _extra_files={MANIFEST_KEY: manifest.to_json()})
    return output


# ---------------------------------------------------------------------------------------- runtime role
class TorchScriptRuntime(Runtime):
    name = NAME

    def _read(self) -> Manifest:
        self.module, manifest = read_archive(self.path)
        self.input_shape = (1, 3, *manifest.input_size)
        return manifest

    def _run(self, native: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(native))).numpy()


# ---------------------------------------------------------------------------------------- the table row
SPEC = TargetSpec(NAME, ".ts", "TorchScript archive (toy target of the contract test)", export_torchscript,
                  TorchScriptRuntime, summary, None, ("torch",), ("fp32",), "fp32", mobile=False)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(TARGETS, NAME, SPEC)
    return SPEC


def test_the_toy_row_is_consistent(toy, trained_deploy):
    contract.check_spec(toy, trained_deploy)


def test_the_toy_target_keeps_the_contract(toy, trained, trained_deploy, tmp_path, monkeypatch):
    path = contract.export_for_contract(toy, trained_deploy, "fp32", tmp_path, None)
    result = contract.check_file(toy, path, trained, "fp32", trained=True)
    assert result["verify"].metrics["images"].max_abs < 1e-4
    contract.check_refuses_existing_output(toy, trained_deploy, path)
    contract.check_atomic_write(toy, trained_deploy, tmp_path / "atomic", monkeypatch)


def test_the_cli_exports_verifies_and_predicts_the_toy_target(toy, cli, tmp_path):
    out = tmp_path / "tiny.ts"
    code, _, err = cli("export", "--target", NAME, "--model", "tiny", "--checkpoint", CHECKPOINT,
                       "--labels", LABELS_FILE, "--output", out)
    assert code == 0 and out.exists() and "verify tiny.ts: PASS" in err, err
    code, _, err = cli("verify", out, "--checkpoint", CHECKPOINT)
    assert code == 0 and "PASS" in err, err
    code, stdout, _ = cli("predict", out, sample_images()[0])
    assert code == 0 and "%" in stdout


def test_the_bench_planner_offers_the_toy_target(toy):
    from evim_deploy.benchmark.runner import BenchConfig, plan
    rows = plan(BenchConfig(targets=[NAME], precisions=["fp32"], resolutions=[64]))
    assert [(row.target, row.precision) for row in rows] == [(NAME, "fp32")]
