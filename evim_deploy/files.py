"""Artifacts on disk: a file or a package folder. Size, digest and the atomic write every output goes through."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsageError


def artifact_files(path: str | Path) -> list[Path]:
    """The files of an artifact: itself, or every file under a package folder (sorted)."""
    path = Path(path)
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def artifact_bytes(path: str | Path) -> int:
    """Size on disk of a file or of every file in a package folder."""
    return sum(f.stat().st_size for f in artifact_files(path))


def artifact_megabytes(path: str | Path) -> float:
    return artifact_bytes(path) / 1e6


def artifact_digest(path: str | Path) -> str:
    """sha256 over the artifact's files' bytes, in path order."""
    digest = hashlib.sha256()
    for f in artifact_files(path):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def refuse_existing(output: Path, force: bool) -> None:
    """An existing output is replaced only with ``force``."""
    if output.exists() and not force:
        raise UsageError(f"{output} already exists", "pass --force to overwrite it, or choose another --output")


@contextmanager
def staged_output(output: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``output`` only if the block finishes.

    Nothing partial is ever left at ``output``: an exception, Ctrl-C or a failed check removes the
    temporary file or directory.
    """
    output = Path(output)
    refuse_existing(output, force)
    parent = output.parent if str(output.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    except OSError as err:
        raise UsageError(f"cannot write to {parent} ({err.strerror or err})",
                         "choose a writable --output location") from None
    staged = tmp_dir / output.name
    try:
        yield staged
        if not staged.exists():
            raise RuntimeError(f"exporter wrote nothing to {staged}")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(staged, output)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
