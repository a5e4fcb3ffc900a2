"""The sub-commands of ``evim-deploy``, one module each. A command module exposes ``NAME``, ``HELP``,
``configure(parser)`` (its arguments) and ``run(args) -> int`` (the exit code); :mod:`evim_deploy.cli`
builds the parser from :data:`COMMANDS` and dispatches. Shared argument builders live in :mod:`.common`."""
from __future__ import annotations

from . import bench, demo, eval, export, info, predict, quantize_report, verify

COMMANDS = (info, export, verify, predict, bench, eval, quantize_report, demo)

__all__ = ["COMMANDS"]
