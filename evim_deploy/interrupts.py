"""Ctrl-C that always wins and never crashes.

Raising :class:`KeyboardInterrupt` in the middle of torch or a converter unwinds through native frames, and
those are not always safe to unwind: CI saw SIGABRT and SIGSEGV (exit -6, -11) before the CLI could even
answer, and a second press during interpreter shutdown did the same. So under :func:`ctrl_c_exits` (the CLI's
entry point) the first press raises nothing: it ignores further presses, runs the registered
:func:`cleanup` callbacks (the staged outputs of :mod:`evim_deploy.files`), says goodbye and ends the process
with exit 130 at once, skipping the interpreter's teardown. A block that must finish (a rename) runs
:func:`deferred`: a press during it takes effect when it ends. Without :func:`ctrl_c_exits` (the Python API)
Ctrl-C raises :class:`KeyboardInterrupt` as usual, and every ``finally`` cleans up.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Callable, Iterator

EXIT_CODE = 130
_cleanups: list[Callable[[], None]] = []
_goodbye: list[Callable[[], None]] = []
_state = {"pressed": False, "deferring": 0}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _pressed(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # one press is enough; the rest are ignored
    _state["pressed"] = True
    if not _state["deferring"]:
        _leave()


def _leave() -> None:
    """Run the cleanups (newest first) and the goodbye, then end the process without unwinding or teardown."""
    for callback in [*reversed(_cleanups), *_goodbye]:
        try:
            callback()
        except Exception:  # noqa: BLE001 - leaving regardless; one failed cleanup must not stop the others
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(EXIT_CODE)


@contextmanager
def ctrl_c_exits(goodbye: Callable[[], None]) -> Iterator[None]:
    """Within the block, Ctrl-C cleans up, calls ``goodbye`` and exits with 130 (see the module docstring).
    The previous handler comes back afterwards, so the CLI can run in-process (tests) without keeping it."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _pressed)
    _state["pressed"] = False
    _goodbye.append(goodbye)
    try:
        yield
    finally:
        _goodbye.remove(goodbye)
        signal.signal(signal.SIGINT, previous)


@contextmanager
def cleanup(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``callback`` runs if Ctrl-C ends the process (it must be quick and idempotent)."""
    _cleanups.append(callback)
    try:
        yield
    finally:
        _cleanups.remove(callback)


@contextmanager
def deferred() -> Iterator[None]:
    """Run a block that must finish (a rename, a cleanup): a press during it takes effect when it ends, under
    :func:`ctrl_c_exits` or under any other handler (the Python API's :class:`KeyboardInterrupt`)."""
    if _goodbye or not _in_main_thread():  # ctrl_c_exits leaves only when no block is deferring
        _state["deferring"] += 1
        try:
            yield
        finally:
            _state["deferring"] -= 1
        if _state["pressed"] and not _state["deferring"] and _goodbye:
            _leave()
        return
    presses: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: presses.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if presses and callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt now
