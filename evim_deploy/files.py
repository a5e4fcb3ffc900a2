"""Artifacts on disk: a file or a package folder. Size, digest, and the atomic write every output goes through,
which replaces only what evim-deploy wrote."""
from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from . import interrupts
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


# A key of every manifest evim-deploy writes: embedded in each exported file or package, and in a bundle's
# manifest.json. An existing output is evim-deploy's own (and --force may replace it) only when it carries one.
OWN_KEY = "evim_deploy_version"
OWN_MARKER = f'"{OWN_KEY}"'.encode()
BUNDLE_MANIFEST, BUNDLE_README = "manifest.json", "README.md"
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # a file browser's; replaced with a bundle


def carries_manifest(path: str | Path) -> bool:
    """True when a file, or a file of a package folder, holds an evim-deploy manifest (smallest files first)."""
    for file in sorted(artifact_files(path), key=lambda f: f.stat().st_size):
        with open(file, "rb") as handle:
            if os.fstat(handle.fileno()).st_size and _find(handle, OWN_MARKER):
                return True
    return False


def _find(handle: BinaryIO, needle: bytes) -> bool:
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(needle) >= 0


def bundle_members(folder: Path) -> set[str]:
    """The names a bundle folder's ``manifest.json`` says evim-deploy wrote there (its listed model files only
    when they carry their manifest); empty when the folder holds no bundle manifest."""
    try:
        data = json.loads((folder / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
        listed = [entry["file"] for entry in data["files"]] + ([data["golden"]["folder"]] if "golden" in data else [])
        labels = data["labels_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if OWN_KEY not in data:
        return set()
    models = {name for name in listed if isinstance(name, str) and _exists(folder / name)
              and Path(name).name == name and carries_manifest(folder / name)}
    return {BUNDLE_MANIFEST, BUNDLE_README, str(labels), *models}


def foreign(output: Path, bundle: bool = False) -> str | None:
    """What makes an existing ``output`` someone else's, as words after its name; None when evim-deploy wrote
    all of it: a bundle folder (``bundle``) whose manifest lists everything in it, or a file or package that
    carries its manifest."""
    if not bundle:
        return None if carries_manifest(output) else "carries no evim-deploy manifest, so evim-deploy did not write it"
    if not output.is_dir():
        return "is a file, not a bundle folder evim-deploy wrote"
    members = bundle_members(output) | OS_LITTER
    strangers = sorted(entry.name for entry in output.iterdir() if entry.name not in members)
    if not strangers:
        return None
    more = f" and {len(strangers) - 3} more" if len(strangers) > 3 else ""
    return f"holds {', '.join(strangers[:3])}{more}, which evim-deploy did not write"


def refuse_existing(output: Path, force: bool, bundle: bool = False, meanwhile: bool = False) -> bool:
    """An existing output is replaced only with ``force``, and only when evim-deploy wrote all of it
    (``meanwhile``: checked at the rename, after the export). True when there is one to replace."""
    if not _exists(output):
        return False
    if not force:
        raise _already_exists(output, meanwhile)
    in_the_way = foreign(output, bundle)
    if in_the_way:
        raise UsageError(f"{output} {in_the_way}", "choose another --output or move it")
    return True


def _already_exists(output: Path, meanwhile: bool) -> UsageError:
    appeared = " (it appeared while exporting)" if meanwhile else ""
    return UsageError(f"{output} already exists{appeared}", "pass --force to overwrite it, or choose another --output")


@contextmanager
def staged_output(output: str | Path, force: bool = False, bundle: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``output`` only if the block finishes.

    Nothing partial is ever left at ``output``: an exception, Ctrl-C or a failed check removes the temporary
    file or folder and leaves an old output as it was. ``force`` replaces an old output that evim-deploy wrote
    (:func:`foreign`; ``bundle``: a bundle folder), checked before the block and again at the rename: the old
    one is moved aside, the new one renamed in, then the old one deleted.
    """
    output = Path(output)
    refuse_existing(output, force, bundle)
    parent = output.parent if str(output.parent) else Path(".")
    made: list[Path] = []

    def discard() -> None:  # an old output that could not be put back stays where the error says
        if made and not _exists(made[0] / f"{output.name}.previous"):
            shutil.rmtree(made[0], ignore_errors=True)

    with interrupts.cleanup(discard):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            with interrupts.deferred():
                made.append(Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent)))
        except OSError as err:
            raise UsageError(f"cannot write to {parent} ({err.strerror or err})",
                             "choose a writable --output location") from None
        staged, aside = made[0] / output.name, made[0] / f"{output.name}.previous"
        try:
            yield staged
            if not staged.exists():
                raise RuntimeError(f"exporter wrote nothing to {staged}")
            with interrupts.deferred():
                _swap(staged, output, aside, replace=refuse_existing(output, force, bundle, meanwhile=True))
        finally:
            with interrupts.deferred():
                discard()


def _swap(staged: Path, output: Path, aside: Path, replace: bool) -> None:
    """Rename ``staged`` in; to ``replace`` the old ``output``, move it to ``aside`` first and delete it after
    (put it back on failure). Whatever else is at ``output`` by then stays, and the rename is refused."""
    try:
        if replace:
            os.rename(output, aside)
        _rename_new(staged, output)
    except BaseException as err:
        if _exists(aside):
            try:
                _rename_new(aside, output)
            except OSError:
                raise UsageError(f"{output} changed while exporting; the previous output is kept at {aside}",
                                 "move it back by hand") from None
        if isinstance(err, FileExistsError):  # appeared between the check and the rename
            raise _already_exists(output, meanwhile=True) from None
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    elif _exists(aside):
        aside.unlink()


def _rename_new(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError when something is there. A hard link refuses atomically
    where the file system has them; a folder rename refuses a non-empty folder or a file."""
    if src.is_dir():
        try:
            os.rename(src, dst)
        except OSError as err:
            if isinstance(err, NotADirectoryError) or err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
            raise
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if _exists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.rename(src, dst)
        return
    src.unlink()


def _exists(path: Path) -> bool:
    return os.path.lexists(path)
