"""Reading official, timm and plain EfficientViM checkpoints safely."""
from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CheckpointError
from . import safe_pickle

ENVELOPE_KEYS = ("model_ema", "state_dict_ema", "model", "state_dict", "module")
STEM_KEY = "patch_embed.conv.0.conv.weight"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_file(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({err})",
                                  "re-download or re-save it") from None
    try:
        return safe_pickle.load(path)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower() or "unsupported global" in str(err).lower():
            refused = safe_pickle.refused_global(err)
            what = (f"the pickled global {refused[0]}, which {'would' if refused[1] else 'could'} run code when loaded"
                    if refused else "pickled Python objects that would run code when loaded")
            raise CheckpointError(
                f"refused to load {path}: it contains {what}",
                "re-save only the tensors, e.g. torch.save(model.state_dict(), path), or use .safetensors") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({err})", "re-download or re-save it") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, IndexError, KeyError... for damaged files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason})",
                              "re-download or re-save it") from None


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Take the weights out of a training envelope; prefer ``model_ema`` (the paper's top-1)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict",
                              "save model.state_dict() or the official training checkpoint")
    if STEM_KEY not in obj and not any(k.endswith(STEM_KEY) for k in obj if isinstance(k, str)):
        for key in ENVELOPE_KEYS:
            if isinstance(obj.get(key), dict):
                return unwrap_state_dict(obj[key])
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if STEM_KEY not in state:
        raise CheckpointError(f"checkpoint has no EfficientViM weights (no '{STEM_KEY}')",
                              "pass an official EfficientViM, timm efficientvim or evim-deploy checkpoint")
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt``/``.safetensors`` checkpoint with ``weights_only=True`` and unwrap it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", "check the path")
    return unwrap_state_dict(_load_file(path))


@dataclass(frozen=True)
class Architecture:
    """What a state dict's shapes say about the model that made it."""

    embed_dim: tuple[int, ...]
    depths: tuple[int, ...]
    state_dim: tuple[int, ...]
    num_classes: int
    distillation: bool


def infer_architecture(state: dict[str, torch.Tensor]) -> Architecture:
    depths = []
    for stage in range(3):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"stages\.{stage}\.blocks\.(\d+)\.", k))}
        depths.append(max(ids) + 1 if ids else 0)
    embed = tuple(state[f"stages.{i}.blocks.0.alpha"].shape[1] if f"stages.{i}.blocks.0.alpha" in state else 0
                  for i in range(3))
    states = tuple(state[f"stages.{i}.blocks.0.mixer.A"].shape[0] if f"stages.{i}.blocks.0.mixer.A" in state else 0
                   for i in range(3))
    head = state.get("heads.0.weight")
    return Architecture(embed, tuple(depths), states, head.shape[0] if head is not None else 0,
                        "weights_dist" in state)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], hint: str = "") -> None:
    """Copy ``state`` into ``model``; accepts timm's flat ``[C]`` LayerNorm weights; names any mismatch."""
    own = model.state_dict()
    state = {k: v.reshape(own[k].shape) if k in own and v.numel() == own[k].numel() and v.dim() != own[k].dim()
             else v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in own}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k.encode("unicode_escape").decode() for k in state if k not in own]  # a corrupt key stays one line
    wrong = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    problems = [("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected)]
    parts = [f"{label}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
             for label, keys in problems if keys]
    if parts:
        raise CheckpointError("checkpoint does not fit the model (" + "; ".join(parts) + ")",
                              hint or "pass the --model variant the checkpoint was trained as")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
