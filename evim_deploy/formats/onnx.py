"""The ONNX file format: manifest in ``metadata_props``, graph summary, I/O as ONNX Runtime reports it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import UsageError
from ..manifest import Manifest
from . import MANIFEST_KEY, FileSummary, io_entry, op_histogram

if TYPE_CHECKING:
    import onnx

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
          "tensor(int8)": np.int8}


def embed_manifest(model: "onnx.ModelProto", manifest: Manifest) -> None:
    """Put the manifest in ``metadata_props`` and a one-line I/O description in ``doc_string``."""
    import onnx
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {MANIFEST_KEY: manifest.to_json()})
    model.producer_name = "evim-deploy"
    height, width = manifest.input_size
    model.doc_string = (f"EfficientViM-{manifest.variant} {manifest.precision}, input {INPUT_NAME} [N,3,{height},"
                        f"{width}] RGB normalized (mean {manifest.mean}, std {manifest.std}); output {OUTPUT_NAME} "
                        f"[N,{manifest.num_classes}]")


def read_manifest(metadata: dict[str, str], path: str | Path) -> Manifest:
    """The manifest from ONNX Runtime's ``custom_metadata_map`` of ``path``."""
    if MANIFEST_KEY not in metadata:
        raise UsageError(f"{path} carries no evim-deploy manifest", "export it with evim-deploy")
    return Manifest.from_json(metadata[MANIFEST_KEY])


def summary(path: str | Path) -> FileSummary:
    """Node count, op histogram, opset and size of an ONNX file."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False)
    opset = max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    return FileSummary(op_histogram(node.op_type for node in graph.graph.node), len(graph.graph.node),
                       Path(path).stat().st_size, "nodes", {"opset": opset, "line": (f"opset {opset}",)})


def describe_io(nodes: Iterable[Any]) -> list[dict[str, Any]]:
    """ONNX Runtime ``NodeArg``s as I/O entries (a symbolic dimension is ``None``)."""
    return [io_entry(n.name, [d if isinstance(d, int) else None for d in n.shape],
                     str(np.dtype(DTYPES.get(n.type, np.float32)))) for n in nodes]
