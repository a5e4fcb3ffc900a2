"""Top-1/top-5 accuracy of an exported file, or of the reference model, on a labelled image folder.

The folder has the ImageNet-val layout: one sub-folder per class, images inside (any depth).
Sub-folder names are mapped to the model's class indices by, in order:

1. a label map (``--label-map``): a JSON object ``{"folder": index or label}``, or a text file
   whose line *i* starts with the folder name of class *i* (ImageNet's ``LOC_synset_mapping.txt``);
2. the manifest's labels, when every folder name is one of them;
3. sorted folder order, when there are exactly as many folders as classes (torchvision's
   ``ImageFolder`` convention, which is also ImageNet's synset order).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .console import track, warn
from .errors import UsageError
from .manifest import Manifest
from .preprocess import list_images, preprocess

Predict = Callable[[np.ndarray], np.ndarray]  # normalized NCHW float32 -> logits (B, classes)


@dataclass
class LabelledImages:
    """Image files, their class indices, and how folder names were mapped to classes."""

    files: list[Path]
    targets: np.ndarray
    classes: dict[str, int]
    mapping: str


def _read_label_map(path: Path, labels: Sequence[str]) -> dict[str, int]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read label map {path} ({type(err).__name__})",
                         "pass a JSON object {folder: index} or a text file, one folder name per line") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"label map {path} is not valid JSON ({err.msg}, line {err.lineno})",
                             "fix the file: a JSON object {folder: class index or label}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"label map {path} holds a JSON {type(raw).__name__}", "use an object {folder: index}")
        return {str(k): _class_index(v, labels, path) for k, v in raw.items()}
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    return {name: index for index, name in enumerate(names)}


def _class_index(value: Any, labels: Sequence[str], source: Path) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in labels:
        return labels.index(value)
    raise UsageError(f"label map {source} maps to {value!r}, neither a class index nor one of the model's labels",
                     "map each folder to an integer class index or to a label in the manifest")


def class_indices(folders: Sequence[str], labels: Sequence[str], label_map: str | Path | None = None,
                  ) -> tuple[dict[str, int], str]:
    """``{folder: class index}`` for these class folders, and which rule produced it."""
    if label_map is not None:
        mapping = _read_label_map(Path(label_map), labels)
        unknown = [f for f in folders if f not in mapping]
        if unknown:
            raise UsageError(f"label map {label_map} has no entry for folder(s) {', '.join(unknown[:3])}"
                             + (f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""),
                             "add them to the map, or remove those folders")
        chosen, rule = {f: mapping[f] for f in folders}, f"label map {Path(label_map).name}"
    elif all(f in labels for f in folders):
        doubled = [f for f in folders if list(labels).count(f) > 1]
        if doubled:
            raise UsageError(f"folder name {doubled[0]!r} is the label of several classes",
                             "pass --label-map to say which class each folder is")
        chosen, rule = {f: list(labels).index(f) for f in folders}, "folder name = manifest label"
    elif len(folders) == len(labels):
        chosen, rule = {f: i for i, f in enumerate(sorted(folders))}, "sorted folder order (ImageFolder)"
    else:
        raise UsageError(f"{len(folders)} class folders (e.g. {folders[0]!r}) match neither the model's "
                         f"{len(labels)} labels (e.g. {labels[0]!r}) nor their number",
                         "pass --label-map FILE mapping each folder name to a class index")
    bad = {f: i for f, i in chosen.items() if not 0 <= i < len(labels)}
    if bad:
        folder, index = next(iter(bad.items()))
        raise UsageError(f"folder {folder!r} maps to class {index}, outside 0..{len(labels) - 1}",
                         "fix the label map: indices count from 0")
    return chosen, rule


def labelled_images(data: str | Path, labels: Sequence[str], label_map: str | Path | None = None) -> LabelledImages:
    """The images of an ImageNet-val style folder with their class indices."""
    data = Path(data)
    files = list_images(data)
    if not files:
        raise UsageError(f"no images under {data}", "pass a folder with one sub-folder of images per class")
    loose = [f for f in files if f.parent == data]
    if loose:
        raise UsageError(f"{data} has images directly inside it (e.g. {loose[0].name}), so their class is unknown",
                         "put each class's images in a sub-folder named after the class (ImageNet-val layout)")
    folder_of = {f: f.relative_to(data).parts[0] for f in files}
    classes, rule = class_indices(sorted(set(folder_of.values())), labels, label_map)
    return LabelledImages(files, np.array([classes[folder_of[f]] for f in files]), classes, rule)


@dataclass
class EvalResult:
    """Accuracy of one model on one labelled folder (``logits`` stay in memory, out of the JSON)."""

    model: str
    target: str
    precision: str
    data: str
    samples: int
    top1: float
    top5: float
    mapping: str
    seconds: float
    skipped: list[str] = field(default_factory=list)
    agreement: dict[str, float] | None = None
    logits: np.ndarray | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("logits", "targets")}
        return data

    def summary(self) -> str:
        text = f"top-1 {self.top1:.2%}  top-5 {self.top5:.2%}  on {self.samples} images"
        if self.agreement:
            text += (f"  | vs reference: top-1 agreement {self.agreement['top1']:.2%}, "
                     f"cosine {self.agreement['cosine']:.5f}")
        return text


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1)[:, :k]
    return float((top == targets[:, None]).any(-1).mean())


def evaluate(predict: Predict, manifest: Manifest, data: str | Path, label_map: str | Path | None = None,
             batch: int = 32, limit: int | None = None, name: str = "model") -> EvalResult:
    """Run ``predict`` over the labelled folder ``data`` (preprocessed per ``manifest``); top-1/top-5."""
    images = labelled_images(data, manifest.labels, label_map)
    files, targets = images.files[:limit], images.targets[:limit]
    start, chunks, kept, skipped = time.perf_counter(), [], [], []
    pending: list[np.ndarray] = []
    for index, path in enumerate(track(files, f"eval {name}", total=len(files))):
        try:
            pending.append(preprocess(path, manifest))
            kept.append(index)
        except UsageError:
            skipped.append(str(path))
        if len(pending) == batch or (index == len(files) - 1 and pending):
            chunks.append(np.asarray(predict(np.stack(pending)), np.float32))
            pending = []
    if not chunks:
        raise UsageError(f"none of the {len(files)} images under {data} could be read", "check the files")
    if skipped:
        warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}; accuracy is over the rest")
    logits, targets = np.concatenate(chunks), targets[kept]
    return EvalResult(name, manifest.target, manifest.precision, str(data), len(targets),
                      topk_accuracy(logits, targets, 1), topk_accuracy(logits, targets, 5), images.mapping,
                      time.perf_counter() - start, skipped, logits=logits, targets=targets)


def evaluate_file(path: str | Path, data: str | Path, label_map: str | Path | None = None,
                  threads: int | None = None, limit: int | None = None) -> EvalResult:
    """Accuracy of an exported file (of any target :func:`~evim_deploy.targets.load` opens)."""
    from .targets import load
    with load(path, threads=threads) as runtime:
        return evaluate(runtime.run_nchw, runtime.manifest, data, label_map, limit=limit, name=Path(path).name)


def evaluate_reference(model, data: str | Path, label_map: str | Path | None = None,
                       input_size: tuple[int, int] | None = None, limit: int | None = None) -> EvalResult:
    """Accuracy of the PyTorch reference model (its manifest's preprocessing, at ``input_size``)."""
    from .verify import reference_logits
    manifest = model.manifest.with_input_size(input_size) if input_size else model.manifest
    return evaluate(lambda x: reference_logits(model, x), manifest, data, label_map, limit=limit,
                    name=f"{manifest.variant} reference")


def agreement(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and mean logits cosine of ``test`` against ``reference`` (same images)."""
    from .verify import Metrics
    metrics = Metrics.compare(reference, test)
    return {"top1": metrics.top1, "cosine": metrics.cosine, "min_cosine": metrics.min_cosine}
