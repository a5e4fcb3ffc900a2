"""Optional extras in tests: outside ``make test`` a missing extra skips, naming the pip line; inside it, where
every extra is installed (``make test`` sets :data:`ALL_EXTRAS_ENV`), a missing one fails the run instead of
skipping a backend silently."""
from __future__ import annotations

import importlib
import os
from types import ModuleType

ALL_EXTRAS_ENV = "EVIM_DEPLOY_ALL_EXTRAS"


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported, or a skip (a failure under :data:`ALL_EXTRAS_ENV`) that says which extra installs it."""
    import pytest
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"{module} is not installed ({err}): pip install 'evim-deploy[{extra}]'"
        if os.environ.get(ALL_EXTRAS_ENV):
            pytest.fail(f"{message}; {ALL_EXTRAS_ENV} is set (make test installs every extra)", pytrace=False)
        pytest.skip(message, allow_module_level=True)
