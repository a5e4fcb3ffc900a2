"""Small randomized models and their deploy forms, cached per process (callers must not modify them)."""
from __future__ import annotations

import functools

import torch

from ..model import create_model, reparameterize
from ..model.layers import LayerNorm1D, LayerNorm2D
from ..model.randomize import randomize_

_NORMS = (torch.nn.modules.batchnorm._BatchNorm, LayerNorm1D, LayerNorm2D)


@functools.lru_cache(maxsize=None)
def randomized_model(variant: str = "m1", seed: int = 0, num_classes: int = 1000) -> torch.nn.Module:
    """A reference model whose BN stats, gates, A, D and fusion weights are all random."""
    return randomize_(create_model(variant, num_classes=num_classes, seed=seed), seed)


@functools.lru_cache(maxsize=None)
def deploy_model(variant: str = "m1", size: tuple[int, int] = (224, 224), seed: int = 0) -> torch.nn.Module:
    """The deploy form of :func:`randomized_model` at ``size``."""
    return reparameterize(randomized_model(variant, seed), size)


@functools.lru_cache(maxsize=None)
def harsh_model(variant: str = "m1", seed: int = 1, num_classes: int = 1000) -> torch.nn.Module:
    """A reference model with every parameter N(0, 0.2) and BN running variances U[0.5, 1.5] (running means 0).

    Norm scales (BN and LayerNorm weights) are centred on 1, as a trained network's are: centred on 0 they
    shrink the signal at every norm, and M1 gives logits of 1.8 on which fp32 rounding is 5e-7, a tame model.
    Centred on 1, M1 (seed 1, 224²) gives logits of about 4, and PyTorch fp32 itself is 6.8e-5 (random inputs) to
    1.6e-4 (the sample photos) from float64: more than the former fixed fp32 bound of verify (1e-4)."""
    model = create_model(variant, num_classes=num_classes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    norms = {name for name, module in model.named_modules() if isinstance(module, _NORMS)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            module, leaf = name.rpartition(".")[::2]
            centre = 1.0 if module in norms and leaf == "weight" else 0.0
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2 + centre)
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    return model.eval()
