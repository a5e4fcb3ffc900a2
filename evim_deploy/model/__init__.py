"""Reference EfficientViM, checkpoint loading and the deploy-form reparameterization."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import CheckpointError, UsageError
from ..manifest import Manifest, default_labels, read_labels
from .checkpoint import infer_architecture, load_weights, read_state_dict, sha256_file
from .deploy import DeployEfficientViM, reparameterize, stem_output_size
from .efficientvim import EfficientViM
from .variants import VARIANTS, Variant, get_variant, match_variant

MIN_INPUT_SIDE = 64  # total stride of stem (16) x two merges (4): below this the last stage sees padding only

__all__ = ["EfficientViM", "DeployEfficientViM", "VARIANTS", "Variant", "create_model", "reparameterize",
           "get_variant", "parse_resolution", "MIN_INPUT_SIDE", "count_params", "count_macs"]


def _suggest(arch) -> str:
    match = match_variant(arch.embed_dim, arch.depths, arch.state_dim, arch.distillation) or match_variant(
        arch.embed_dim, arch.depths, arch.state_dim, not arch.distillation)
    if match is None:
        return f"its shapes (embed {arch.embed_dim}, depths {arch.depths}) fit no known variant"
    return f"it looks like --model {match.base}{'_dist' if arch.distillation else ''}"


def create_model(variant: str = "m1", checkpoint: str | Path | None = None, num_classes: int | None = None,
                 seed: int | None = 0, labels: Sequence[str] | str | Path | None = None) -> EfficientViM:
    """Build the reference model, optionally loading an official/timm/plain checkpoint.

    ``num_classes`` and distillation are inferred from the checkpoint when it is given.
    Without a checkpoint the weights are random, drawn with ``seed`` (recorded in the manifest so
    that ``verify`` can rebuild the same model). The returned model is in eval mode and carries a
    :class:`Manifest` as ``model.manifest``. ``labels`` (class names in index order, or a text file
    with one per line) go into the manifest; the default is ImageNet's for 1000 classes, else ``class_i``.
    """
    spec = get_variant(variant)
    state, sha, distillation = None, None, spec.distillation
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        arch = infer_architecture(state)
        hint = _suggest(arch)
        if num_classes is not None and arch.num_classes != num_classes:
            raise CheckpointError(f"checkpoint has {arch.num_classes} classes (heads.0.weight) but "
                                  f"--num-classes {num_classes} was asked for", "drop --num-classes or fix it")
        if spec.arch() != (arch.embed_dim, arch.depths, arch.state_dim):
            raise CheckpointError(f"checkpoint does not fit {spec.name} (embed {arch.embed_dim}, depths "
                                  f"{arch.depths}, states {arch.state_dim})", hint)
        num_classes, distillation, sha = arch.num_classes, arch.distillation, sha256_file(checkpoint)
    num_classes = 1000 if num_classes is None else num_classes
    if num_classes <= 0:
        raise UsageError(f"num_classes must be positive, got {num_classes}", "pass --num-classes N with N >= 1")
    if seed is not None:
        torch.manual_seed(seed)
    model = EfficientViM(embed_dim=spec.embed_dim, depths=spec.depths, state_dim=spec.state_dim,
                         num_classes=num_classes, distillation=distillation)
    if state is not None:
        load_weights(model, state, hint)
    name = spec.base + ("_dist" if distillation else "")
    model.manifest = Manifest(variant=name, num_classes=num_classes, input_size=(spec.input_size,) * 2,
                              labels=_labels(labels, num_classes),
                              source=Path(checkpoint).name if checkpoint else None, source_sha256=sha,
                              seed=None if checkpoint else seed)
    return model.eval()


def _labels(labels: Sequence[str] | str | Path | None, num_classes: int) -> list[str]:
    if labels is None:
        return default_labels(num_classes)
    names = read_labels(labels) if isinstance(labels, (str, Path)) else [str(name) for name in labels]
    if len(names) != num_classes:
        raise UsageError(f"{len(names)} labels given for a {num_classes}-class model",
                         "pass exactly one class name per output, in class-index order")
    return names


def model_from_manifest(manifest: Manifest, checkpoint: str | Path | None = None) -> EfficientViM:
    """Rebuild the reference model a file was exported from (same checkpoint, or same random seed)."""
    if checkpoint is None and manifest.source_sha256:
        raise UsageError(f"the file was exported from checkpoint {manifest.source}",
                         "pass the same --checkpoint to compare against it")
    if checkpoint is not None and manifest.source_sha256 and sha256_file(checkpoint) != manifest.source_sha256:
        raise UsageError(f"checkpoint {checkpoint} is not the one the file was exported from ({manifest.source})",
                         "pass the checkpoint recorded in the file's manifest")
    return create_model(manifest.variant, checkpoint, None if checkpoint else manifest.num_classes,
                        seed=manifest.seed if manifest.seed is not None else 0, labels=manifest.labels)


def parse_resolution(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``224`` -> (224, 224); ``192x320`` -> (192, 320) as (H, W). Rejects sizes below the minimum."""
    if isinstance(text, tuple):
        hw = text
    else:
        parts = str(text).lower().replace("×", "x").split("x")
        try:
            hw = tuple(int(p) for p in parts)
        except ValueError:
            raise UsageError(f"bad resolution {text!r}", "use 224 or HxW such as 192x320") from None
        if len(hw) == 1:
            hw = (hw[0], hw[0])
        if len(hw) != 2:
            raise UsageError(f"bad resolution {text!r}", "use 224 or HxW such as 192x320")
    if min(hw) < MIN_INPUT_SIDE:
        raise UsageError(f"resolution {hw[0]}x{hw[1]} is too small for EfficientViM (stride 64: 4 stride-2 stem "
                         f"convs and 2 merges)", f"use at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}")
    return hw


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one image (``torch.utils.flop_counter`` flops / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, *input_size))
    return counter.get_total_flops() // 2
