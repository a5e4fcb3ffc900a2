"""The bad-input matrix: one line naming the problem and the fix, non-zero exit, no traceback, nothing partial left.

Rows covered elsewhere: checkpoints (missing/truncated/corrupt/pickled code/wrong variant/wrong classes) in
test_checkpoint.py; calibration folders (empty, non-images) in test_calibration.py; Core ML on Linux in
test_coreml*.py and test_bench.py; a missing TFLite extra in test_tflite*.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evim_deploy import preprocess
from evim_deploy.errors import UsageError
from evim_deploy.manifest import Manifest
from evim_deploy.targets import TargetSpec, export, load


def assert_clean_error(code: int, err: str, *needles: str, exit_code: int = 2) -> None:
    text = " ".join(err.split())
    assert code == exit_code, err
    assert "Traceback" not in err and "error:" in text
    for needle in needles:
        assert needle in text, text


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    from evim_deploy import create_model, reparameterize
    return export(reparameterize(create_model("m1"), (64, 64)), target="onnx",
                  output=tmp_path_factory.mktemp("onnx") / "m1.onnx")


def test_output_exists_is_refused_without_force(cli, small_onnx):
    before = small_onnx.stat().st_mtime_ns
    code, _, err = cli("export", "--target", "onnx", "--resolution", "64", "--output", small_onnx)
    assert_clean_error(code, err, "already exists", "--force")
    assert small_onnx.stat().st_mtime_ns == before


def test_force_overwrites(cli, small_onnx, tmp_path):
    """An earlier export is replaced; a file evim-deploy did not write never is (tests/test_force.py)."""
    out = tmp_path / "m.onnx"
    out.write_bytes(small_onnx.read_bytes())
    code, _, err = cli("export", "--target", "onnx", "--resolution", "64", "--seed", "1", "--output", out, "--force",
                       "--no-verify")
    assert code == 0, err
    assert out.read_bytes() != small_onnx.read_bytes() and list(tmp_path.iterdir()) == [out]


def test_unwritable_output_path(cli, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, _, err = cli("export", "--target", "onnx", "--resolution", "64",
                           "--output", blocker / "sub" / "m.onnx")
    assert_clean_error(code, err, "cannot write", "writable --output")
    assert list(tmp_path.iterdir()) == [blocker]


def test_output_suffix_must_match_the_target(cli, tmp_path):
    """Runtimes pick the target by suffix: a TFLite flatbuffer named .onnx would never load again."""
    code, _, err = cli("export", "--target", "onnx", "--resolution", "64", "--output", tmp_path / "m.tflite")
    assert_clean_error(code, err, "onnx writes .onnx files, not 'm.tflite'", "name the output m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_export_leaves_nothing(tmp_path):
    """Ctrl-C while the export runs: exit 130, one line, nothing left. M4 at 384x384 keeps the export window
    seconds long. One press must be enough, however long the process takes to clean up and shut down."""
    out = tmp_path / "m4.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "evim_deploy.cli", "export", "--target", "onnx", "--model", "m4",
                             "--resolution", "384", "--no-verify", "--output", str(out)],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".m4.onnx.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.name.startswith(".m4.onnx.") for p in tmp_path.iterdir()), "export never started writing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("first_press_after_s", [0.0, 2.0])
def test_ctrl_c_hammered_until_exit_does_not_crash(tmp_path, first_press_after_s):
    """An impatient user keeps pressing Ctrl-C from the moment the export starts writing until the process has
    gone: exit 130, the goodbye line, nothing left. Before, a KeyboardInterrupt unwound through torch and the
    process died with SIGABRT or SIGSEGV (-6, -11) before answering, or a later press killed its shutdown."""
    proc = subprocess.Popen([sys.executable, "-m", "evim_deploy.cli", "export", "--target", "onnx", "--model", "m4",
                             "--resolution", "384", "--no-verify", "--output", str(tmp_path / "m4.onnx")],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.iterdir()):
        time.sleep(0.02)
    time.sleep(first_press_after_s)
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_missing_optional_extra_names_the_pip_line(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(TargetSpec, "missing_modules",
                        lambda self, exporting=True: ["coremltools"] if self.extra else [])
    code, _, err = cli("export", "--target", "coreml", "--output", tmp_path / "m.mlpackage")
    assert_clean_error(code, err, "coremltools is not installed", "pip install 'evim-deploy[coreml]'")
    assert list(tmp_path.iterdir()) == []


def test_resolution_too_small_says_the_minimum(cli, tmp_path):
    code, _, err = cli("export", "--target", "onnx", "--resolution", "48x200",
                           "--output", tmp_path / "m.onnx")
    assert_clean_error(code, err, "too small", "at least 64x64")


def test_predict_on_a_non_image(cli, small_onnx, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    code, _, err = cli("predict", small_onnx, text)
    assert_clean_error(code, err, "not a readable image")


def test_predict_on_a_missing_model(cli, tmp_path):
    code, _, err = cli("predict", tmp_path / "nope.onnx", tmp_path / "x.jpg")
    assert_clean_error(code, err, "model file not found")


def test_unknown_file_suffix(cli, tmp_path):
    code, _, err = cli("verify", tmp_path / "model.bin")
    assert_clean_error(code, err, "cannot tell the target", ".onnx")


@pytest.mark.parametrize("array,needle", [
    (np.zeros((1, 3, 100, 100), np.float32), "does not fit"),
    (np.zeros((1, 64, 64, 3), np.float32), "layout: this file takes NCHW"),
    (np.zeros((1, 3, 64, 64), np.int32), "dtype int32"),
    ([[1.0, 2.0]], "expected a numpy array"),
])
def test_runtime_rejects_wrong_shape_dtype_layout(small_onnx, array, needle):
    with load(small_onnx) as backend, pytest.raises(UsageError) as info:
        backend.predict(array) if isinstance(array, np.ndarray) else backend.check_input(array)
    assert needle in str(info.value)


def test_debug_shows_the_traceback(tmp_path):
    from evim_deploy.cli import main
    with pytest.raises(UsageError):
        main(["--debug", "predict", str(tmp_path / "nope.onnx"), str(tmp_path / "x.jpg")])


# ---- images: grayscale, CMYK, 16-bit, EXIF-rotated, huge -----------------------------------------------------
MANIFEST = Manifest("m1", 10, (64, 64), [str(i) for i in range(10)])


def _photo(size=(120, 80)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_grayscale_and_cmyk_and_16bit_are_converted(tmp_path):
    _photo().convert("L").save(tmp_path / "gray.png")
    _photo().convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((np.arange(80 * 120).reshape(80, 120) * 6).astype(np.uint16)).save(tmp_path / "deep.png")
    for name in ("gray.png", "cmyk.jpg", "deep.png"):
        img = preprocess.load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (120, 80)
        assert preprocess.preprocess(img, MANIFEST).shape == (3, 64, 64)
    deep = np.asarray(preprocess.load_image(tmp_path / "deep.png"))
    assert deep.max() > 200, "16-bit images must be scaled to 8 bits, not clipped"


def test_exif_rotation_is_applied(tmp_path):
    photo = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    img = preprocess.load_image(tmp_path / "rotated.jpg")
    assert img.size == (80, 120)


def test_huge_image_is_refused(tmp_path, monkeypatch):
    _photo((400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(preprocess, "MAX_PIXELS", 100_000)
    with pytest.raises(UsageError, match="larger than 100,000 pixels"):
        preprocess.load_image(tmp_path / "big.png")


def test_calibration_skips_unreadable_and_converts_odd_images(tmp_path, capsys):
    from evim_deploy.calibration import load_calibration
    _photo().convert("L").save(tmp_path / "gray.png")
    _photo().convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    calib = load_calibration(tmp_path, MANIFEST, samples=10)
    assert len(calib) == 2 and len(calib.skipped) == 1 and calib.skipped[0].endswith("broken.jpg")
    assert "skipped 1 unreadable" in " ".join(capsys.readouterr().err.split())


def _process(pid: int) -> tuple[str, int] | None:
    """``(state, parent pid)`` of a process from /proc, or None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    process = _process(pid)
    return process is not None and process[0] != "Z"


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    processes = {int(p.name): _process(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    return [child for child, process in processes.items() if process and process[0] != "Z" and process[1] == pid]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the bench worker")
def test_ctrl_c_during_bench_takes_the_worker_process_with_it(small_onnx, tmp_path):
    """bench measures each row in a worker process; Ctrl-C to the CLI alone (not its process group) ends both."""
    proc = subprocess.Popen([sys.executable, "-m", "evim_deploy.cli", "bench", str(small_onnx), "--seconds", "120",
                             "--workdir", str(tmp_path)], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not _children(proc.pid):
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "bench never started its worker"
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)]


def test_ctrl_c_during_a_rename_finishes_it_then_exits_and_cleans_up(tmp_path):
    """The CLI's Ctrl-C ends the process at once (no exception unwinding through torch), but a block that must
    finish (a rename) finishes first; the staged output is removed and nothing after the block runs."""
    out = tmp_path / "m.onnx"
    script = f"""
import os, signal, time
from pathlib import Path
from evim_deploy import interrupts
from evim_deploy.files import staged_output
out = Path({str(out)!r})
with interrupts.ctrl_c_exits(lambda: print("goodbye", flush=True)):
    with staged_output(out) as staged:
        staged.write_bytes(b"half")
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
            (out.parent / "finished").write_text("yes")
        print("after the block")
        time.sleep(10)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stdout == "goodbye\n", (done.stdout, done.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["finished"]


def test_ctrl_c_through_the_api_raises_after_a_deferred_block(tmp_path):
    """Without the CLI's handler (the Python API), Ctrl-C is a KeyboardInterrupt as usual, held back until a
    deferred block has finished, and staged_output cleans up."""
    from evim_deploy import interrupts
    from evim_deploy.files import staged_output
    finished = []
    with pytest.raises(KeyboardInterrupt), staged_output(tmp_path / "m.onnx") as staged:
        staged.write_bytes(b"half")
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
            finished.append(True)
        finished.append(False)
    assert finished == [True] and list(tmp_path.iterdir()) == []
