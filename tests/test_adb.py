"""The phone's shell gets one string from adb: every remote word is quoted, so a ``.tflite`` name with a space
or ``;`` stays one argument and runs nothing on the phone. No phone needed: a fake ``adb`` on PATH pushes into
a local folder and hands the remote command to a real POSIX ``sh``."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evim_deploy.benchmark import adb

DATA = Path(__file__).parent / "data"
NAME = "my model;touch pwned.tflite"
REMOTE = "/data/local/tmp/benchmark_model '--graph=/data/local/tmp/my model;touch pwned.tflite' --num_threads=2 " \
         "--num_runs=50 --warmup_runs=10 --use_xnnpack=true"


def test_the_remote_command_quotes_the_file_name(tmp_path):
    model, calls = tmp_path / NAME, []
    model.write_bytes(b"tfl3")
    recorded = (DATA / "benchmark_model_info_prefixed.txt").read_text()
    adb.run_on_device(model, "adb:R58M123", threads=2, runner=lambda args, **kw: calls.append(args) or
                      subprocess.CompletedProcess(args, 0, recorded if "shell" in args else "", ""))
    assert calls == [["adb", "-s", "R58M123", "push", str(model), f"/data/local/tmp/{NAME}"],  # no shell: as is
                     ["adb", "-s", "R58M123", "shell", REMOTE]]
    assert shlex.split(REMOTE)[1] == f"--graph=/data/local/tmp/{NAME}"


FAKE_ADB = """#!{python}
import shutil, subprocess, sys
phone = {phone!r}
args = sys.argv[1:]
assert args[:2] == ["-s", "R58M123"], args
if args[2] == "push":
    shutil.copy(args[3], args[4].replace("/data/local/tmp", phone))
else:  # adb joins the words after "shell" with spaces and hands them to the phone's sh
    remote = " ".join(args[3:]).replace("/data/local/tmp", phone)
    sys.exit(subprocess.run(["sh", "-c", remote], cwd=phone).returncode)
"""
FAKE_BENCHMARK_MODEL = """#!{python}
import json, os, sys
graph = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--graph="))
if not os.path.isfile(graph):
    sys.exit(print(f"ERROR: Could not open '{{graph}}'."))
open("argv.json", "w").write(json.dumps(sys.argv[1:]))
print(open({recorded!r}).read())
"""


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_a_fake_phone_runs_the_named_file_and_nothing_else(tmp_path, monkeypatch):
    phone, bin_dir = tmp_path / "phone", tmp_path / "bin"
    phone.mkdir()
    bin_dir.mkdir()
    scripts = {bin_dir / "adb": FAKE_ADB.format(python=sys.executable, phone=str(phone)),
               phone / "benchmark_model": FAKE_BENCHMARK_MODEL.format(
                   python=sys.executable, recorded=str(DATA / "benchmark_model_plain.txt"))}
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / NAME
    model.write_bytes(b"tfl3")
    timing = adb.run_on_device(model, "adb:R58M123", threads=2)
    assert timing.runs == 50
    assert json.loads((phone / "argv.json").read_text())[0] == f"--graph={phone}/{NAME}"
    assert (phone / NAME).read_bytes() == b"tfl3" and not list(phone.glob("pwned*"))
