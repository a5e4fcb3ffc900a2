"""Weights-only unpickling that also reads the inert containers training scripts pickle beside the weights.

Training checkpoints carry a yacs ``CfgNode`` (the official EfficientViM script), an ``argparse.Namespace``
(DeiT, timm ``train.py``) or numpy scalars (metrics). None of them runs code, but the weights-only unpickler
refuses every class it does not know. For the duration of one load, stand-ins that carry no behaviour are
registered under those foreign names; nothing from the file is ever imported or called.
"""
from __future__ import annotations

import contextlib
import pickle
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

_NUMERIC_DTYPE = re.compile(r"[biuf][1248]")


class CfgNodeStandIn:
    """Read in place of ``yacs.config.CfgNode``: becomes a plain ``OrderedDict`` of the config's values.

    The weights-only unpickler fills only exact dicts, so the class never has instances of its own.
    """

    def __new__(cls, *args: object, **kwargs: object) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


class NamespaceStandIn:
    """Read in place of ``argparse.Namespace``: a bag of the pickled attributes, nothing else."""

    def __setstate__(self, state: object) -> None:  # a dict only: never setattr, so never __class__
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("an argparse.Namespace whose state is not a dict")
        vars(self).update(state)


class NumpyDtypeStandIn:
    """Read in place of ``numpy.dtype``: remembers a numeric type code and its byte order, nothing else."""

    def __init__(self, code: object, *flags: object) -> None:
        if not isinstance(code, str) or not _NUMERIC_DTYPE.fullmatch(code):
            raise pickle.UnpicklingError(f"numpy dtype {code!r} is not a plain number type")
        self.code, self.order = code, "="

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def numpy_scalar(dtype: object, data: object) -> np.generic:
    """Read in place of numpy's scalar reconstructor: plain numbers from their bytes only."""
    if not isinstance(dtype, NumpyDtypeStandIn) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not a plain number")
    kind = np.dtype(dtype.order + dtype.code)
    if len(data) != kind.itemsize:
        raise pickle.UnpicklingError(f"a numpy {kind} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype=kind)[0]


STAND_INS = [(CfgNodeStandIn, "yacs.config.CfgNode"), (NamespaceStandIn, "argparse.Namespace"),
             (NumpyDtypeStandIn, "numpy.dtype"), (numpy_scalar, "numpy.core.multiarray.scalar"),
             (numpy_scalar, "numpy._core.multiarray.scalar")]
_REGISTRY_LOCK = threading.Lock()  # torch's allowlist is process-wide: one scoped registration at a time
_REFUSED = re.compile(r"GLOBAL (\S+) (was not an allowed global|whose module \S+ is blocked)")


def load(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)`` with the stand-ins registered for this call only."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with _REGISTRY_LOCK, (scoped(STAND_INS) if scoped else contextlib.nullcontext()):
        return torch.load(path, map_location="cpu", weights_only=True)


def refused_global(error: BaseException) -> tuple[str, bool] | None:
    """The pickled global torch's weights-only unpickler refused, and whether torch blocks its whole module."""
    match = _REFUSED.search(str(error))
    if match is None:
        return None
    name = match.group(1)  # torch prints builtins.eval as just "eval"
    return (name if "." in name else f"builtins.{name}"), match.group(2).startswith("whose")
