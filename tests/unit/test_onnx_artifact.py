"""The graph artifact (X.onnx + X.json): written from a checked artifact, same model id, its own
sha256 checked at every load, and refused wherever Keras or TensorFlow would be asked to run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance import model
from appliance.config import ConfigError
from appliance.ml import onnx_artifact
from appliance.server.settings import ServerSettings

pytest.importorskip("onnx", reason="the runtimes extra (make venv installs it)")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "resnet50.keras"
    model.create_untrained(path, stem="stride1")
    return path


@pytest.fixture(scope="module")
def graph(source: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("graph") / "resnet50.onnx"
    onnx_artifact.export(source, out)
    return out


def test_the_graph_keeps_the_model_id_and_records_its_own_sha256(source, graph) -> None:
    loaded = onnx_artifact.load(graph)
    original = model.read_metadata(source)
    assert loaded.model_id == original.model_id
    assert loaded.class_names == original.class_names and loaded.input_size == 32
    record = json.loads(graph.with_suffix(".json").read_text())["extra"]["onnx"]
    assert record["sha256"] == model.sha256_file(graph)
    assert record["written_from"] == "resnet50.keras"
    probs = np.array([[0.1, 0.7, 0.2] + [0.0] * 7])
    assert loaded.labels(probs) == [(original.class_names[1], pytest.approx(0.7))]


def test_a_changed_graph_is_refused(graph, tmp_path: Path) -> None:
    copy = tmp_path / "resnet50.onnx"
    copy.write_bytes(graph.read_bytes() + b"\0")
    (tmp_path / "resnet50.json").write_text(graph.with_suffix(".json").read_text())
    with pytest.raises(model.ModelMetadataError, match=r"resnet50.onnx: sha256 \w+ does not match"):
        onnx_artifact.load(copy)


def test_metadata_without_the_graphs_sha256_is_refused(source, graph, tmp_path: Path) -> None:
    copy = tmp_path / "resnet50.onnx"
    copy.write_bytes(graph.read_bytes())
    (tmp_path / "resnet50.json").write_text(source.with_suffix(".json").read_text())
    with pytest.raises(model.ModelMetadataError, match=r"no onnx\.sha256 in its extra field"):
        onnx_artifact.load(copy)


def test_writing_over_the_sources_metadata_is_refused(source: Path) -> None:
    with pytest.raises(model.ModelMetadataError, match="is the source's"):
        onnx_artifact.export(source, source.with_suffix(".onnx"))
    with pytest.raises(model.ModelMetadataError, match=r"a graph artifact is a \.onnx file"):
        onnx_artifact.export(source, source.parent / "other.npz")


def test_keras_refuses_the_graph_and_names_the_backend(graph) -> None:
    with pytest.raises(model.ModelMetadataError, match="only the server's openvino backend"):
        model.load(graph)


@pytest.mark.parametrize(
    "env",
    [{"BACKEND": "tensorflow"}, {}, {"BACKEND": "openvino", "INFERENCE_MODE": "naive"}],
)
def test_the_server_refuses_a_graph_without_openvino(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="is an ONNX graph: it runs with BACKEND=openvino"):
        ServerSettings.from_env({"MODEL_PATH": "/opt/model/resnet50.onnx", **env})
    settings = ServerSettings.from_env({"MODEL_PATH": "/m/resnet50.onnx", "BACKEND": "openvino"})
    assert settings.backend == "openvino"


def test_the_cli_writes_and_reads_the_graph(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "served" / "resnet50.onnx"
    cli = [sys.executable, "-m", "appliance", "model"]
    made = subprocess.run([*cli, "export-onnx", str(source), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    model_id = model.read_metadata(source).model_id
    assert f"saved {out} ({model_id}" in made.stdout
    info = subprocess.run([*cli, "info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["model_id"] == model_id
    refused = subprocess.run([*cli, "export-onnx", str(source), "--out", str(source)],
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "a graph artifact is a .onnx file" in refused.stderr
