"""Ctrl-C that always wins and never crashes.

The first press raises :class:`KeyboardInterrupt` as usual and is remembered, so a native library that swallows
it cannot let an export finish: :func:`raise_if_pressed` raises it again before an output is renamed in.
Cleanup runs :func:`deferred` (a press during it is only recorded), and once the CLI has answered a press the
process is :func:`leaving`: further presses are ignored, because a second one while torch shuts down kills the
interpreter (SIGABRT or SIGSEGV) and leaves temporary files behind. Outside the main thread nothing changes.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

_pressed = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _pressed
    _pressed = True


def _raise(signum: int, frame: FrameType | None) -> None:
    _record(signum, frame)
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Route Ctrl-C through this module for the rest of the process (the CLI's entry point calls it)."""
    global _pressed
    _pressed = False
    if _in_main_thread():
        signal.signal(signal.SIGINT, _raise)


def raise_if_pressed() -> None:
    """Raise :class:`KeyboardInterrupt` when Ctrl-C was pressed since :func:`install`, swallowed or not."""
    if _pressed:
        raise KeyboardInterrupt


def leaving() -> None:
    """Ignore Ctrl-C from now on: the process only cleans up and exits."""
    if _in_main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def deferred() -> Iterator[None]:
    """Run a block that must finish (a rename, a cleanup): a press during it is recorded, not raised."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
