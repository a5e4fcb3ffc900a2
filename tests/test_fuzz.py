"""Property-based fuzzing: malformed arguments and checkpoints always end in a clean error, never a crash."""
from __future__ import annotations

import io
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evim_deploy.cli import main
from evim_deploy.errors import CheckpointError
from evim_deploy.model import create_model
from evim_deploy.model.checkpoint import read_state_dict

FLAGS = ["--model", "--checkpoint", "--resolution", "--num-classes", "--precision", "--target", "--output",
         "--calib", "--calib-samples", "--threads", "--top", "--seed", "--opset", "--layout", "--iterations"]
VALUES = st.one_of(st.sampled_from(["m1", "m9", "tiny", "0", "-1", "224", "32x32", "1e9", "x", "", "onnx", "all",
                                    "int8", "/nonexistent/file.pth", "/dev/null", "nan"]),
                   st.text(max_size=12))
COMMANDS = st.sampled_from(["info", "export", "verify", "predict", "nonsense"])  # bench: see test_bench.py


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=COMMANDS, args=st.lists(st.one_of(st.sampled_from(FLAGS), VALUES), max_size=6))
def test_cli_never_crashes(command, args, capsys, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    cwd = os.getcwd()
    os.chdir(workdir)  # nothing the fuzzer asks for may land in the repository
    try:
        try:
            code = main([command, *args])
        except SystemExit as stop:  # argparse's own usage errors
            code = stop.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "internal error" not in err


@pytest.fixture(scope="module")
def checkpoint_bytes():
    buffer = io.BytesIO()
    torch.save({"model": create_model("m1").state_dict()}, buffer)
    return buffer.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_checkpoint_loader_rejects_mutations_cleanly(data, checkpoint_bytes, tmp_path_factory):
    """Found by this test: a flipped byte turned a key's 'n' into a newline, and the error echoed it."""
    blob = bytearray(checkpoint_bytes)
    mode = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if mode == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif mode == "flip":
        for _ in range(data.draw(st.integers(1, 16))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        blob = bytearray(data.draw(st.binary(max_size=2048)))
    path = tmp_path_factory.mktemp("ckpt") / "fuzzed.pth"
    path.write_bytes(bytes(blob))
    try:
        state = read_state_dict(path)
    except CheckpointError as err:
        assert str(err).strip() and "\n" not in str(err)
        return
    # a mutation that still loads must either fit the model or be refused by name
    try:
        create_model("m1", path)
    except CheckpointError as err:
        assert "\n" not in str(err)
    assert isinstance(state, dict)
