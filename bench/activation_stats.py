"""Activation statistics of the trained M1 fixture against a random-weight M1, per stage of the deploy form.

    .venv/bin/python bench/activation_stats.py [--images 64] [--out out/activation_stats]

Both models run in deploy form (what every exporter quantizes) on the same held-out digit scenes
(``evim_deploy.testing.scenes``). Per stage:

* **outlier channels**: at the input of every layer the INT8 exporters quantize (each ``Conv2d`` and
  ``Linear``), the channels whose max |activation| over the images exceeds ``--ratio`` (6) times the
  median live channel's; ``dead`` channels are 0 on every image (ReLU'd squeeze-excite units);
  ``worst`` is the largest channel max over the median (what a per-tensor scale must span);
* **HSM softmax**: the token softmax of every HSM-SSD (``dt`` over the L tokens), its entropy divided by
  log L (1 = uniform weights 1/L), the median of each state's largest weight, and the share of weights
  below 1/512, which a uint8 output scale of 1/256 rounds to zero.

Writes ``activation_stats.md`` and ``.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from evim_deploy.model import reparameterize
from evim_deploy.model.deploy import DeployHSMSSD
from evim_deploy.preprocess import list_images, preprocess
from evim_deploy.testing import randomized_model, scenes_trained_model, write_scene_folders

QUANTIZED = (torch.nn.Conv2d, torch.nn.Linear)


def stage_of(name: str) -> str:
    """``stages.1.0.mixer.hz_proj`` -> ``stages.1``; ``stem.0.conv`` -> ``stem``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("stages", "downsamples") else parts[0]


class Recorder:
    """Forward hooks: per-channel max |input| of every quantized layer, and every HSM token softmax."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.channel_max: dict[str, torch.Tensor] = {}
        self.softmax: dict[str, list[torch.Tensor]] = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, QUANTIZED):
                self.handles.append(module.register_forward_pre_hook(self._input_hook(name, module)))
            elif isinstance(module, DeployHSMSSD):
                self.handles.append(module.bcdt_dw.register_forward_hook(self._softmax_hook(name, module)))

    def _input_hook(self, name: str, module: torch.nn.Module):
        channel_dim = 1 if isinstance(module, torch.nn.Conv2d) else -1

        def hook(_, inputs):
            x = inputs[0].abs().movedim(channel_dim, 0).flatten(1).amax(1)
            self.channel_max[name] = torch.maximum(self.channel_max.get(name, x), x)
        return hook

    def _softmax_hook(self, name: str, mixer: DeployHSMSSD):
        def hook(_, __, output):
            n = mixer.state_dim
            dt = output.flatten(2)[:, 2 * n:3 * n]
            self.softmax.setdefault(name, []).append(dt.softmax(-1))
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def outlier_rows(channel_max: dict[str, torch.Tensor], ratio: float) -> dict[str, dict]:
    """Per stage: quantized layers, input channels, dead ones (always 0), outliers and the worst max/median ratio
    (median over the live channels)."""
    rows: dict[str, dict] = {}
    for name, maxima in channel_max.items():
        live = maxima[maxima > 0]
        median = float(live.median()) if live.numel() else 1.0
        row = rows.setdefault(stage_of(name), {"layers": 0, "channels": 0, "dead": 0, "outliers": 0, "worst": 0.0,
                                               "worst_layer": ""})
        row["layers"] += 1
        row["channels"] += maxima.numel()
        row["dead"] += maxima.numel() - live.numel()
        row["outliers"] += int((live > ratio * median).sum())
        if float(maxima.max()) / median > row["worst"]:
            row["worst"], row["worst_layer"] = float(maxima.max()) / median, name
    return rows


def softmax_rows(softmax: dict[str, list[torch.Tensor]]) -> dict[str, dict]:
    """Per stage: tokens L, normalized entropy (mean, min over states), median peak weight, share < 1/512."""
    rows = {}
    for name, chunks in softmax.items():
        weights = torch.cat(chunks)                                       # (images, states, L)
        tokens = weights.shape[-1]
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1) / math.log(tokens)
        per_state = entropy.mean(0)
        rows.setdefault(stage_of(name), []).append({
            "tokens": tokens, "entropy": float(entropy.mean()), "entropy_min": float(per_state.min()),
            "peak": float(weights.amax(-1).median()), "below_half_step": float((weights < 1 / 512).float().mean())})
    merge = {"tokens": max, "entropy_min": min}
    return {stage: {key: merge.get(key, np.mean)([b[key] for b in blocks]) for key in blocks[0]}
            for stage, blocks in rows.items()}


@torch.no_grad()
def statistics(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> dict[str, dict]:
    deploy = reparameterize(model, tuple(x.shape[-2:]))
    recorder = Recorder(deploy)
    for i in range(0, len(x), 16):
        deploy(x[i:i + 16])
    recorder.close()
    return {"outliers": outlier_rows(recorder.channel_max, ratio), "softmax": softmax_rows(recorder.softmax)}


def table(stats: dict[str, dict], ratio: float) -> str:
    names = list(stats)
    lines = [f"Outlier channels at the inputs of the quantized layers (max |x| > {ratio:g}x the median live channel's;"
             " dead = always 0; worst = largest channel max / median, and its layer):", "",
             "| stage | layers | input channels | "
             + " | ".join(f"dead, {n} | outliers, {n} | worst, {n}" for n in names) + " |",
             "|---|---|---|" + "---|---|---|" * len(names)]
    first = stats[names[0]]["outliers"]
    for stage, row in first.items():
        cells = " | ".join(f"{r['dead']} | {r['outliers']} | {r['worst']:.1f}x "
                           f"({r['worst_layer'].removeprefix(stage).lstrip('.') or stage})"
                           for r in (stats[n]["outliers"][stage] for n in names))
        lines.append(f"| {stage} | {row['layers']} | {row['channels']} | {cells} |")
    lines += ["", "HSM token softmax (entropy / log L: 1 = uniform; peak = median of each state's largest weight; "
              "< 1/512 = share of weights a 1/256 uint8 step rounds to zero):", "",
              "| stage | L | " + " | ".join(f"entropy mean (min), {n} | peak, {n} | < 1/512, {n}" for n in names)
              + " |", "|---|---|" + "---|---|---|" * len(names)]
    for stage, row in stats[names[0]]["softmax"].items():
        cells = " | ".join(f"{s['entropy']:.3f} ({s['entropy_min']:.3f}) | {s['peak']:.4f} | {s['below_half_step']:.1%}"
                           for s in (stats[n]["softmax"][stage] for n in names))
        lines.append(f"| {stage} | {row['tokens']} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="held-out scenes to run (default 64)")
    parser.add_argument("--ratio", type=float, default=6.0, help="outlier threshold: max over median channel max")
    parser.add_argument("--out", type=Path, default=Path("out/activation_stats"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    trained = scenes_trained_model()
    files = list_images(write_scene_folders(args.out / "scenes")["heldout"])
    pick = np.random.default_rng(0).permutation(len(files))[:args.images]
    x = torch.from_numpy(np.stack([preprocess(files[i], trained.manifest) for i in sorted(pick)]))
    stats = {"trained": statistics(trained, x, args.ratio), "random": statistics(randomized_model("m1"), x, args.ratio)}
    text = (f"M1 224x224, deploy form, {len(x)} held-out digit scenes; trained = evim_deploy/testing/m1_scenes."
            f"safetensors, random = evim_deploy.testing.randomized_model('m1')\n\n" + table(stats, args.ratio))
    print(text)
    (args.out / "activation_stats.md").write_text(text + "\n")
    (args.out / "activation_stats.json").write_text(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
