"""One rich console for progress bars, tables and warnings (stderr keeps stdout clean for data), and the
one switch that keeps third-party chatter off the terminal."""
from __future__ import annotations

import ctypes
import io
import logging
import os
import sys
import tempfile
import warnings
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from typing import IO, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False, markup=False)  # messages carry paths and [extras]
if not console.is_terminal:  # logs and CI: wide enough for the benchmark table, no wrapping
    console.width = 200
T = TypeVar("T")
_state = {"debug": False, "depth": 0}


def warn(message: str) -> None:
    console.print(f"WARNING: {message}", style="bold yellow")


def set_debug(debug: bool) -> None:
    """``--debug``: :func:`quiet` lets everything through."""
    _state["debug"] = debug


@contextmanager
def quiet() -> Iterator[None]:
    """Third-party output is dropped inside the block: prints, progress bars, Python warnings, log records
    below ERROR, and what C/C++ libraries write to file descriptors 1 and 2 (absl's ``I0000`` lines). The
    console's own messages and progress bars still reach the terminal, and exceptions propagate. Nested
    blocks are one block; under ``--debug`` (:func:`set_debug`) nothing is dropped."""
    if _state["debug"] or _state["depth"]:
        yield
        return
    previous = logging.root.manager.disable
    _state["depth"] += 1
    try:
        with ExitStack() as stack:
            stack.enter_context(_console_on(_terminal(stack)))
            sink = io.StringIO()
            stack.enter_context(redirect_stdout(sink))
            stack.enter_context(redirect_stderr(sink))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            yield
    finally:
        logging.disable(previous)
        _state["depth"] -= 1


def _terminal(stack: ExitStack) -> IO[str]:
    """Point fds 1 and 2 at a temporary file until ``stack`` closes; return where the console writes
    meanwhile: the stream it wrote to, or a copy of the descriptor that stream was."""
    stream = console.file
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stream in memory (tests): no descriptor to keep
        fd = None
    try:
        saved = {n: os.dup(n) for n in (1, 2)}
    except OSError:  # no standard descriptors (a daemon): nothing to silence at that level
        return stream
    _flush()
    sink = stack.enter_context(tempfile.TemporaryFile())
    for n in saved:
        os.dup2(sink.fileno(), n)

    @stack.callback
    def restore() -> None:
        _flush()
        for n, copy in saved.items():
            os.dup2(copy, n)
            os.close(copy)

    if fd not in saved:
        return stream
    terminal = os.fdopen(os.dup(saved[fd]), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                         errors="replace")
    stack.callback(terminal.close)
    return terminal


@contextmanager
def _console_on(stream: IO[str]) -> Iterator[None]:
    previous = console._file  # None: sys.stderr at each write
    console.file = stream
    try:
        yield
    finally:
        console.file = previous


def _flush() -> None:
    """Flush Python's and C's stdio buffers, so nothing written before a redirection lands after it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        ctypes.CDLL(None).fflush(None)
    except (AttributeError, OSError, TypeError):  # no C library to ask (Windows)
        pass


@contextmanager
def progress_bar() -> Iterator[Progress]:
    redirect = not _state["depth"]  # inside quiet(), third-party prints must not reach the bar
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal, redirect_stdout=redirect,
                  redirect_stderr=redirect) as progress:
        yield progress


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (hidden when stderr is not a terminal)."""
    with progress_bar() as progress:
        yield from progress.track(items, total=total, description=description)
