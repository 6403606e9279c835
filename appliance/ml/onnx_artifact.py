"""The served model as a graph artifact: ``X.onnx`` with ``X.json`` beside it.

This is what the ml-server image ships. OpenVINO compiles the graph, so the image needs neither
TensorFlow nor Keras (about 1 GB less to build, store and copy into every bake). The graph is
written by `appliance.ml.onnx_export` from an artifact that loaded and checked as always. Its
metadata is that artifact's, so the model id, which every label records, is unchanged; it adds
the graph's own sha256 (``extra.onnx``), checked at every load.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from appliance import model
from appliance.model import GRAPH_SUFFIX, LoadedModel, Metadata, ModelMetadataError


class GraphModel(LoadedModel):
    """A graph artifact: a loaded model's metadata and labels, and the graph's path."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(None, metadata)
        self.path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise ModelMetadataError(f"{self.path}: an ONNX graph runs on OpenVINO, not in Keras")


def export(source: str | Path, out: Path) -> Metadata:
    """SOURCE (X.keras or X.npz, checked) as the graph ``out`` (Y.onnx) with Y.json; loaded back."""
    from appliance.ml import onnx_export

    if out.suffix != GRAPH_SUFFIX:
        raise ModelMetadataError(f"--out {out}: a graph artifact is a {GRAPH_SUFFIX} file")
    model.refuse_source_metadata(out, source, "write the graph into another folder or name")
    loaded = model.load(source)
    onnx_export.export(loaded.model, out)
    record = {
        "sha256": model.sha256_file(out),
        "opset": onnx_export.OPSET,
        "written_from": Path(source).name,
    }
    metadata = replace(loaded.metadata, extra={**loaded.metadata.extra, "onnx": record})
    model.write_metadata(out, metadata)
    return load(out).metadata  # through the path the server takes


def load(path: str | Path) -> GraphModel:
    """``X.onnx`` with ``X.json``, refusing a graph whose sha256 is not the one recorded."""
    graph, meta = model.artifact_paths(path)
    if graph.suffix != GRAPH_SUFFIX:
        raise ModelMetadataError(f"{graph}: not a graph artifact ({GRAPH_SUFFIX})")
    metadata = model.read_metadata(graph)
    record = metadata.extra.get("onnx")
    if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)):
        raise ModelMetadataError(
            f"{meta}: no onnx.sha256 in its extra field, so not a graph artifact's metadata "
            "(make one with `appliance model export-onnx`)"
        )
    if not graph.is_file():
        raise ModelMetadataError(f"{graph}: model file not found")
    model.require_sha256(graph, record["sha256"], meta)
    return GraphModel(graph, metadata)
