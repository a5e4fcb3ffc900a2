"""Randomize everything the default init leaves degenerate, so tests can see folding bugs.

The official init hides mistakes: BatchNorm gammas of the residual branches are 0, gates
``sigmoid(1e-4)`` are all 0.5, fusion weights are equal and BN statistics are (0, 1). Purely random
statistics, on the other hand, wash the input out within a few layers (every logit becomes the
same for every image), so parity would prove nothing. Here the BN statistics are measured on
random images, as training would, and then jittered.
"""
from __future__ import annotations

import torch
import torch.nn as nn

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, image_size: int = 96) -> nn.Module:
    """In place: random gates, ``A``, ``D``, fusion weights, norm affines and biases; realistic BN statistics."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("alpha", "A", "D") or name.startswith("weights"):
            param.copy_(normal(param.shape))
        elif ".norm." in name or name.startswith("norm."):
            param.copy_(normal(param.shape, 0.2, 1.0) if leaf == "weight" else normal(param.shape, 0.05))
        elif leaf == "bias":
            param.copy_(normal(param.shape, 0.02))
        elif name.startswith("heads"):
            param.copy_(normal(param.shape, param.shape[-1] ** -0.5))
    batchnorms = [m for m in model.modules() if isinstance(m, _BN)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration pass
    was_training = model.training
    model.train()
    model(normal((8, 3, image_size, image_size)))
    model.train(was_training)
    for bn in batchnorms:
        bn.momentum = 0.1
        bn.running_mean.add_(normal(bn.running_mean.shape, 0.05) * bn.running_var.sqrt())
        bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=gen) * 0.4 + 0.8)
    return model
