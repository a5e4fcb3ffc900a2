"""User-facing errors: each names the problem and the fix, printed by the CLI as one line."""
from __future__ import annotations


class EvimError(Exception):
    """Base error. ``str(err)`` is ``"<problem>; <fix>"``; the CLI exits with ``exit_code``."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class UsageError(EvimError):
    """Bad arguments or a bad input file."""


class CheckpointError(EvimError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class MissingExtraError(EvimError):
    """An optional target whose extra is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed", f"run: pip install 'evim-deploy[{extra}]'")


class TargetUnavailableError(EvimError):
    """A target that cannot run on this platform (e.g. Core ML prediction off macOS)."""


class VerificationError(EvimError):
    """An exported file that does not match the reference."""

    exit_code = 1
