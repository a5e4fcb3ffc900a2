"""``golden/``: what the app's own tests need to prove, on the phone, that it feeds and reads each file as here.

One real photo (the first of verify's ``--images`` when given, so that it shows the model's own classes; else the
bundled sample photo of a cat) and its raw uint8 RGB after resize and centre crop, the exact input tensor each file takes
(little-endian ``.bin``), the logits each file gave on this host, and the tolerance a device must meet; listed in
``golden/manifest.json`` with the generated device tests (each target's :attr:`~evim_deploy.targets.TargetSpec.app_test`).

Tolerance (per file, on this photo). Verify's bound for the file's precision allows an angle θ_b around the
PyTorch reference r: cosine bound c gives θ_b = acos c; fp32's max|Δ| bound B (own_ratio x PyTorch fp32's own error
against float64, or relative x max|logit|) gives θ_b = asin(√n·B / ‖r‖). This file's logits e sit θ_m from r, so
a device output that meets verify's bound lies within θ_b + θ_m of e: cosine(device, e) >= cos(θ_b + θ_m). Missing
it proves the device misses verify's bound. The logit scale likewise: verify's norm bound ν (fp32: √n·B / ‖r‖) over
the measured ‖e‖/‖r‖. Top-1 and the top-5 set are asserted only where e's margin exceeds 3x the RMS logit error that
tolerance allows (verify's clear-flip rule); a near-tie is stated as not judged. An fp32 file also states
``tolerance_fp16``, from verify's fp16 bound: what it must show where the device computes it in fp16 (Core ML runs
fp32 programs in fp16 on the Neural Engine).
"""
from __future__ import annotations

import json
import math
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import OWN_KEY
from ..formats import layout_of
from ..manifest import Manifest
from ..preprocess import list_images, load_image, normalize, resize_and_crop
from ..runtime import Runtime
from ..samples import sample_images
from ..targets import get_target
from ..verify import THRESHOLDS, float64_reference, needs_float64, own_draws, reference_logits

GOLDEN_DIR, GOLDEN_MANIFEST = "golden", "manifest.json"
PHOTO = "chelsea.jpg"             # one of the bundled sample photos (a cat): the golden photo without --images
RGB_FILE = "rgb-uint8.bin"        # its pixels after resize and centre crop: what the camera path hands the model
REFERENCE_FILE = "reference.logits.bin"
CLEAR_MARGIN = 3.0                # verify's clear-flip rule: a margin beyond 3x the RMS error is a decision
TOP = 5


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two logit vectors (radians)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.arccos(np.clip(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300), -1.0, 1.0)))


def golden_photo(images: Path | None = None) -> Path:
    """The first image of ``images`` (a folder, as verify's ``--images``), else the sample photo."""
    first = next(iter(list_images(images)), None) if images is not None else None
    return first or next(p for p in sample_images() if p.name == PHOTO)


def golden_pixels(photo: Path, manifest: Manifest) -> np.ndarray:
    """``photo`` resized and centre-cropped as the manifest says: uint8 RGB ``(H, W, 3)``."""
    return np.asarray(resize_and_crop(load_image(photo), manifest), dtype=np.uint8)


def native_input(runtime: Runtime, pixels: np.ndarray) -> np.ndarray:
    """The exact tensor ``runtime``'s file takes for ``pixels``: the pixels themselves for an image input, else the
    normalized tensor in the file's layout and dtype (quantized for an integer input)."""
    if runtime.io()["inputs"][0].get("kind") == "image":
        return pixels[None]
    return runtime.from_nchw(normalize(pixels, runtime.manifest)[None])


def logits_output(io: dict[str, Any]) -> dict[str, Any]:
    """The file's logits output (the first tensor output; Core ML's classifier outputs are not tensors)."""
    return next(node for node in io["outputs"] if "shape" in node and "kind" not in node)


def tolerance(logits: np.ndarray, reference: np.ndarray, bound_angle: float, bound_norm: float | None,
              bounds: dict[str, float]) -> dict[str, Any]:
    """What a device must show against ``logits`` (this file's, here) to be within verify's ``bounds``."""
    e = np.asarray(logits, np.float64).ravel()
    measured, rho = angle(e, reference), float(np.linalg.norm(e) / np.linalg.norm(reference))
    cosine = math.cos(min(math.pi, bound_angle + measured))
    norm = None if bound_norm is None else [max(0.0, (1 - bound_norm) / rho), (1 + bound_norm) / rho]
    ratios = norm or [1.0]  # the largest error vector that tolerance allows, at either end of the scale range
    allowed = float(np.linalg.norm(e)) * max(math.sqrt(max(0.0, s * s + 1 - 2 * s * cosine)) for s in ratios)
    rms = allowed / math.sqrt(e.size)
    ranked = np.sort(e)[::-1]
    margins = {"top1": float(ranked[0] - ranked[1]), "top5": float(ranked[TOP - 1] - ranked[TOP]) if e.size > TOP
               else math.inf}
    return {"cosine": cosine, "norm_ratio": norm,
            "top1": margins["top1"] > CLEAR_MARGIN * rms, "top5": margins["top5"] > CLEAR_MARGIN * rms,
            "margins": {k: v for k, v in margins.items() if math.isfinite(v)}, "allowed_rms_error": rms,
            "measured": {"cosine": math.cos(measured), "norm_ratio": rho}, "verify_bound": bounds,
            "rule": f"cosine >= cos(θ_b + θ_m): θ_b {bound_angle:.4g} rad allowed by verify's bound, θ_m "
                    f"{measured:.4g} rad between this file's logits and the reference's; top-1 / top-5 asserted "
                    f"where their margin > {CLEAR_MARGIN:g}x the RMS error {rms:.3g} that tolerance allows"}


def little_endian(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


class Golden:
    """Writes ``golden/`` as the bundle's files are verified: :meth:`add` per file, :meth:`finish` at the end."""

    def __init__(self, folder: Path, reference: torch.nn.Module, manifest: Manifest,
                 images: Path | None = None) -> None:
        self.folder, self.reference, self.manifest = folder, reference, manifest
        folder.mkdir()
        photo = golden_photo(images)
        self.photo = f"photo{photo.suffix.lower()}"
        shutil.copyfile(photo, folder / self.photo)
        self.pixels = golden_pixels(photo, manifest)
        self.nchw = normalize(self.pixels, manifest)[None]
        self.reference32 = reference_logits(reference, self.nchw)[0]
        self.tensors: dict[str, bytes] = {}
        self._tensor(RGB_FILE, self.pixels[None])
        (folder / REFERENCE_FILE).write_bytes(little_endian(self.reference32.astype(np.float32)))
        self.files: list[dict[str, Any]] = []

    @cached_property
    def float64(self) -> tuple[np.ndarray, float]:
        """The reference in float64 on the photo, and PyTorch fp32's own max|Δ| from it (verify's worst draw)."""
        exact = reference_logits(float64_reference(self.reference), self.nchw)[0]
        draws = [self.reference32, *(d[0] for d in own_draws(self.reference, self.nchw))]
        return exact, float(max(np.abs(np.asarray(d, np.float64) - exact).max() for d in draws))

    def _tensor(self, name: str, array: np.ndarray) -> str:
        """Write ``array`` as ``name`` (or reuse an identical tensor already written); return its file name."""
        data = little_endian(array)
        same = next((n for n, d in self.tensors.items() if d == data), None)
        if same:
            return same
        if name in self.tensors:
            name = name.replace(".bin", f"-{len(self.tensors)}.bin")
        self.tensors[name] = data
        (self.folder / name).write_bytes(data)
        return name

    def _budget(self, bounds: dict[str, float]) -> tuple[np.ndarray, float, float | None]:
        """The reference verify judges against, the angle its bound allows, and the relative norm it allows."""
        if not needs_float64(bounds):
            return self.reference32, math.acos(bounds["cosine"]), bounds.get("norm")
        exact, own = self.float64
        allowed = max(bounds.get("own_ratio", 0.0) * own, bounds.get("relative", 0.0) * float(np.abs(exact).max()))
        norm = math.sqrt(exact.size) * allowed / float(np.linalg.norm(exact))
        return exact, math.asin(min(1.0, norm)), norm

    def add(self, file: str, target: str, precision: str, runtime: Runtime, bounds: dict[str, float]) -> None:
        """Run ``runtime`` (the opened ``file``) on the golden input; record its tensor, logits and tolerance."""
        io = runtime.io()
        native = native_input(runtime, self.pixels)
        logits = runtime.predict(native)[0]
        node = io["inputs"][0]
        layout = layout_of(list(native.shape))
        name = self._tensor(f"input-{layout.lower()}-{native.dtype}.bin", native)
        (self.folder / f"{file}.logits.bin").write_bytes(little_endian(logits.astype(np.float32)))
        top = np.argsort(-logits)[:TOP].tolist()
        self.files.append({
            "file": file, "target": target, "precision": precision,
            "input": {**node, "file": name, "shape": list(native.shape), "dtype": str(native.dtype), "layout": layout},
            "output": logits_output(io),
            "expected": {"logits": f"{file}.logits.bin", "shape": [1, logits.size], "dtype": "float32",
                         "top5": top, "top5_labels": [self.manifest.labels[i] for i in top]},
            "tolerance": tolerance(logits, *self._budget(bounds), bounds)})
        if needs_float64(bounds):
            fp16 = THRESHOLDS["fp16"]
            self.files[-1]["tolerance_fp16"] = tolerance(logits, *self._budget(fp16), fp16)

    def finish(self, bundle_manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the device tests and ``manifest.json``; return the bundle manifest's ``golden`` section."""
        h, w = self.manifest.input_size
        golden = {OWN_KEY: self.manifest.evim_deploy_version, "folder": self.folder.name, "photo": self.photo,
                  "pixels": {"file": RGB_FILE, "shape": [1, h, w, 3], "dtype": "uint8", "layout": "NHWC",
                             "what": f"{self.photo} resized (short side {self.manifest.resize_size[0]}, "
                                     f"{self.manifest.interpolation}) and centre-cropped to {h}x{w}, RGB"},
                  "reference": {"logits": REFERENCE_FILE, "what": "the PyTorch reference (fp32) on the pixels"},
                  "labels_file": bundle_manifest["labels_file"], "endianness": "little", "files": self.files}
        tests = []
        for target in dict.fromkeys(f["target"] for f in self.files):
            spec = get_target(target)
            written = spec.app_test([f for f in self.files if f["target"] == target], golden, bundle_manifest) \
                if spec.app_test else None
            if written:
                (self.folder / written[0]).write_text(written[1], encoding="utf-8")
                tests.append({"target": target, "file": written[0], "setup": written[2]})
        golden["tests"] = tests
        (self.folder / GOLDEN_MANIFEST).write_text(json.dumps(golden, indent=2))
        return {"folder": self.folder.name, "manifest": f"{self.folder.name}/{GOLDEN_MANIFEST}", "photo": self.photo,
                "tests": tests}


def read_tensor(folder: Path, name: str, shape: list[int], dtype: str) -> np.ndarray:
    """A golden ``.bin`` (little-endian) as an array of ``shape`` and ``dtype``."""
    data = np.frombuffer((folder / name).read_bytes(), np.dtype(dtype).newbyteorder("<"))
    return data.astype(np.dtype(dtype)).reshape(shape)  # native byte order, writable


def misses(entry: dict[str, Any], logits: np.ndarray, expected: np.ndarray, key: str = "tolerance") -> list[str]:
    """What ``logits`` (a run of ``entry``'s file on its golden input) misses of the stated tolerance: the checks
    the generated device tests make, here."""
    tol, got, want = entry[key], np.asarray(logits, np.float64).ravel(), np.asarray(expected, np.float64).ravel()
    if got.shape != want.shape:
        return [f"{got.size} logits, expected {want.size}"]
    found = []
    cosine, ratio = math.cos(angle(got, want)), float(np.linalg.norm(got) / np.linalg.norm(want))
    if not (np.isfinite(got).all() and cosine >= tol["cosine"]):
        found.append(f"cosine {cosine:.6f} < {tol['cosine']:.6f}")
    if tol["norm_ratio"] and not tol["norm_ratio"][0] <= ratio <= tol["norm_ratio"][1]:
        found.append(f"logit scale {ratio:.4f} outside {tol['norm_ratio'][0]:.4f}..{tol['norm_ratio'][1]:.4f}")
    top = np.argsort(-got)[:TOP].tolist()
    if tol["top1"] and top[0] != entry["expected"]["top5"][0]:
        found.append(f"top-1 {top[0]} != {entry['expected']['top5'][0]}")
    if tol["top5"] and set(top) != set(entry["expected"]["top5"]):
        found.append(f"top-5 {sorted(top)} != {sorted(entry['expected']['top5'])}")
    return found
