"""What runs the model's arithmetic in a worker: TensorFlow (the reference), or OpenVINO.

Both start from the same artifact, loaded by `appliance.model.load` (sha256 and metadata checked),
so the model id is the same. OpenVINO gets the ONNX graph written from those weights
(`appliance.ml.onnx_export`) and compiles it for this CPU at its default precision: bfloat16 on a
CPU with AMX, float32 elsewhere (`appliance bench runtimes` measures both; bfloat16 agreed with
TensorFlow on 99.7% of the test split's labels and ran 4x faster there at batch 64).
OpenVINO also serves a graph artifact (X.onnx, `appliance.ml.onnx_artifact`) with no TensorFlow
imported at all: the ml-server image's form.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
BACKENDS = ("tensorflow", "openvino")
Call = Callable[[np.ndarray], np.ndarray]


def tensorflow_call(loaded: Any) -> Call:
    """The model's direct call as one TensorFlow graph.

    Calling the Keras model eagerly dispatches ~170 layers from Python on every call, which costs
    more than the arithmetic at the batch sizes a server sees; the traced graph measured 15x
    faster here at batch 1 and 4.6x at batch 64, with identical outputs. The batch dimension is
    left unknown in the signature, so every batch size reuses one trace: no padding, no retracing.
    """
    import tensorflow as tf

    size = loaded.input_size
    model = loaded.model
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")

    @tf.function(input_signature=[spec])
    def call(images: tf.Tensor) -> tf.Tensor:
        return model(images, training=False)

    return lambda batch: call(batch).numpy()


def openvino_compiled(model: Any, threads: int, precision: str = "") -> Call:
    """An OpenVINO model (or the path of an ONNX file) compiled for this CPU; one infer request
    (the batcher calls from one thread). ``precision`` pins the inference precision (f32, bf16);
    empty keeps OpenVINO's default for the CPU."""
    import openvino as ov

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(model, "CPU", config)
    log.info(
        "OpenVINO %s: %s precision, %s threads",
        ov.__version__.split("-")[0],
        compiled.get_property("INFERENCE_PRECISION_HINT"),
        compiled.get_property("INFERENCE_NUM_THREADS") or "all",
    )
    request = compiled.create_infer_request()
    return lambda batch: request.infer({0: np.ascontiguousarray(batch)})[0].copy()


def openvino_call(loaded: Any, threads: int) -> Call:
    """The same weights, through the ONNX graph written from them, compiled by OpenVINO."""
    from appliance.ml import onnx_export

    with tempfile.TemporaryDirectory(prefix="appliance-openvino-") as folder:
        path = onnx_export.export(loaded.model, Path(folder) / "model.onnx")
        return openvino_compiled(str(path), threads)


def load(path: str, threads: int) -> Any:
    """The artifact at ``path``: a graph (X.onnx: no TensorFlow imported), or a Keras one."""
    from appliance import model

    if model.artifact_paths(path)[0].suffix == model.GRAPH_SUFFIX:
        from appliance.ml import onnx_artifact

        return onnx_artifact.load(path)
    _set_tensorflow_threads(threads)
    return model.load(path)


def _set_tensorflow_threads(count: int) -> None:
    """Limit TensorFlow's thread pools; must run before TensorFlow executes anything."""
    if count <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)
    except RuntimeError as exc:  # TensorFlow already ran in this process: keep its pools
        log.warning("MODEL_THREADS=%d not applied: %s", count, exc)


def model_call(backend: str, loaded: Any, threads: int) -> Call:
    from appliance.ml.onnx_artifact import GraphModel

    if isinstance(loaded, GraphModel):  # settings refuse a graph with any other backend
        return openvino_compiled(str(loaded.path), threads)
    if backend == "openvino":
        return openvino_call(loaded, threads)
    return tensorflow_call(loaded)
