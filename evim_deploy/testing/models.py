"""Small randomized models and their deploy forms, cached per process (callers must not modify them)."""
from __future__ import annotations

import functools

import torch

from ..model import create_model, reparameterize
from ..model.randomize import randomize_


@functools.lru_cache(maxsize=None)
def randomized_model(variant: str = "m1", seed: int = 0, num_classes: int = 1000) -> torch.nn.Module:
    """A reference model whose BN stats, gates, A, D and fusion weights are all random."""
    return randomize_(create_model(variant, num_classes=num_classes, seed=seed), seed)


@functools.lru_cache(maxsize=None)
def deploy_model(variant: str = "m1", size: tuple[int, int] = (224, 224), seed: int = 0) -> torch.nn.Module:
    """The deploy form of :func:`randomized_model` at ``size``."""
    return reparameterize(randomized_model(variant, seed), size)
