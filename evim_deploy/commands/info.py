"""``evim-deploy info``: a variant's parameters, MACs, input, preprocessing and deploy-form parity."""
from __future__ import annotations

import argparse

from .common import add_model_args, build_model

NAME = "info"
HELP = "show a variant: params, MACs, input, preprocessing, deploy-form parity"


def configure(p: argparse.ArgumentParser) -> None:
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..model import count_macs, count_params, reparameterize
    from ..verify import Metrics
    model, size = build_model(args)
    deploy = reparameterize(model, size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        parity = Metrics.compare(model(x).numpy(), deploy(x).numpy())
    m = model.manifest.with_input_size(size)
    rows = [("variant", m.variant), ("params", f"{count_params(model):,}"),
            ("MACs", f"{count_macs(model, size) / 1e6:.1f}M at {size[0]}x{size[1]}"),
            ("input", f"1x3x{size[0]}x{size[1]} RGB, NCHW float32"),
            ("preprocess", f"{m.interpolation} resize to {m.resize_size[0]}x{m.resize_size[1]}, centre crop "
                           f"(crop_pct {m.crop_pct}), /255, mean {m.mean}, std {m.std}"),
            ("classes", f"{m.num_classes} ({m.labels[0]}, {m.labels[1]}, ...)"),
            ("source", m.source or f"random init (seed {m.seed})"),
            ("deploy parity", f"max|Δlogit| {parity.max_abs:.2e}, cosine {parity.cosine:.8f}"),
            ("deploy modules", ", ".join(sorted({type(mod).__name__ for mod in deploy.modules()
                                                 if not list(mod.children())})))]
    for key, value in rows:
        print(f"{key:>15}: {value}")
    return 0 if np.isfinite(parity.max_abs) else 1
