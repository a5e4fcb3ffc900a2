"""One rich console for progress bars, tables and warnings (stderr keeps stdout clean for data), and the
one switch that keeps third-party chatter off the terminal."""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False, markup=False)  # messages carry paths and [extras]
if not console.is_terminal:  # logs and CI: wide enough for the benchmark table, no wrapping
    console.width = 200
T = TypeVar("T")


def warn(message: str) -> None:
    console.print(f"WARNING: {message}", style="bold yellow")


@contextmanager
def quiet() -> Iterator[None]:
    """Third-party libraries' prints, progress bars, warnings and log records below ERROR are dropped
    inside the block (converters print trees, sizes and per-tensor warnings; evim-deploy reports its own
    summary). Exceptions still propagate."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sink = io.StringIO()
    try:
        with redirect_stdout(sink), redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextmanager
def progress_bar() -> Iterator[Progress]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        yield progress


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (hidden when stderr is not a terminal)."""
    with progress_bar() as progress:
        yield from progress.track(items, total=total, description=description)
