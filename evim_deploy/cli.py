"""``evim-deploy``: builds the parser from the command modules (:mod:`evim_deploy.commands`), dispatches, and
turns every error into one line and an exit code. A command module with ``QUIET = True`` runs inside
:func:`~evim_deploy.console.quiet` (third-party log noise off the terminal) unless ``--debug`` is given."""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from types import ModuleType
from typing import Sequence

from . import __version__, interrupts
from .commands import COMMANDS
from .console import console, quiet, set_debug
from .errors import EvimError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evim-deploy",
                                     description=f"evim-deploy: {', '.join(c.NAME for c in COMMANDS)}")
    parser.add_argument("--version", action="version", version=f"evim-deploy {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and third-party libraries' log output (converters, runtimes)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.configure(sub.add_parser(command.NAME, help=command.HELP, description=command.HELP))
    return parser


def _interrupted() -> None:
    console.print("interrupted: nothing was written", style="bold red")
    console.file.flush()


def main(argv: Sequence[str] | None = None) -> int:
    with interrupts.ctrl_c_exits(_interrupted):
        args = build_parser().parse_args(argv)
        return _run(next(c for c in COMMANDS if c.NAME == args.command), args)


def _run(command: ModuleType, args: argparse.Namespace) -> int:
    set_debug(args.debug)
    try:
        with quiet() if getattr(command, "QUIET", False) else nullcontext():
            return command.run(args)
    except EvimError as err:
        if args.debug:
            raise
        console.print(f"error: {err}", style="bold red", soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:  # raised by code, not by Ctrl-C (which ctrl_c_exits answers)
        _interrupted()
        return interrupts.EXIT_CODE
    except Exception as err:  # last resort: one line, the traceback behind --debug
        if args.debug:
            raise
        console.print(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the "
                      "traceback and please report it)", style="bold red", soft_wrap=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
