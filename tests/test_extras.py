"""A missing optional extra skips a test module with its pip line, except under ``make test`` (every extra
installed), where it fails the run: no backend is ever skipped silently there."""
from __future__ import annotations

import os
import subprocess
import sys

from evim_deploy.testing.extras import ALL_EXTRAS_ENV

MODULE = ('from evim_deploy.testing.extras import require\n'
          'require("evim_deploy_no_such_backend", "coreml")\n'
          'def test_never_runs():\n    pass\n')


def _pytest(tmp_path, env_value: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_missing.py").write_text(MODULE)
    env = {k: v for k, v in os.environ.items() if k != ALL_EXTRAS_ENV}
    if env_value is not None:
        env[ALL_EXTRAS_ENV] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_outside_make_test_a_missing_extra_skips_with_the_pip_line(tmp_path):
    proc = _pytest(tmp_path, None)
    assert proc.returncode in (0, 5) and "1 skipped" in proc.stdout, proc.stdout  # 5: nothing left to run
    assert "pip install 'evim-deploy[coreml]'" in proc.stdout


def test_under_make_test_a_missing_extra_fails_the_run(tmp_path):
    proc = _pytest(tmp_path, "1")
    assert proc.returncode != 0 and "skipped" not in proc.stdout, proc.stdout
    assert "evim_deploy_no_such_backend is not installed" in proc.stdout
