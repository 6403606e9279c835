"""The served ResNet50 as an ONNX graph, written from its weights: no tf2onnx, no TensorFlow graph.

The network is what `appliance.model.build` makes (every stem), so the graph is spelt out layer
by layer from the backbone's own wiring: each BatchNormalization folded into the convolution
before it, Keras's "same" padding made explicit, NHWC uint8 in (as the server feeds it),
class probabilities out. A layer of any other kind is refused by name rather than guessed at.
ONNX Runtime and OpenVINO both read the file (`appliance bench runtimes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class ExportError(ValueError):
    """The model holds something this exporter does not write; the message names it."""


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.weights: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], output: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(kind, inputs, [output], name=output, **attrs))
        return output


def _sources(inbound: Any) -> list[str]:
    """The names of the layers whose outputs feed a layer, from its config's inbound nodes."""
    found: list[str] = []
    if isinstance(inbound, dict):
        if inbound.get("class_name") == "__keras_tensor__":
            found.append(inbound["config"]["keras_history"][0])
        else:
            for value in inbound.values():
                found += _sources(value)
    elif isinstance(inbound, list | tuple):
        for value in inbound:
            found += _sources(value)
    return found


def _pads(layer, kernel: tuple[int, int]) -> list[int]:
    if layer.padding == "valid":
        return [0, 0, 0, 0]
    if layer.padding == "same" and tuple(layer.strides) == (1, 1):
        (kh, kw) = kernel
        return [(kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2]
    raise ExportError(f"{layer.name}: padding {layer.padding!r} at strides {layer.strides}")


def _folded(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel (O, I, kh, kw) and bias with the BatchNormalization after it folded in."""
    kernel = np.asarray(conv.kernel, dtype=np.float64)  # (kh, kw, I, O)
    bias = np.asarray(conv.bias, dtype=np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    if bn is not None:
        scale = np.asarray(bn.gamma, np.float64) / np.sqrt(
            np.asarray(bn.moving_variance, np.float64) + bn.epsilon
        )
        kernel = kernel * scale
        bias = (bias - np.asarray(bn.moving_mean, np.float64)) * scale + np.asarray(bn.beta)
    return kernel.transpose(3, 2, 0, 1).astype(np.float32), bias.astype(np.float32)


def _backbone(g: _Graph, backbone, x: str) -> str:
    """Every layer of the Keras ResNet50 in its config's order; returns the output's name."""
    layers = backbone.get_config()["layers"]
    inputs = {entry["name"]: _sources(entry.get("inbound_nodes", [])) for entry in layers}
    consumers: dict[str, list[str]] = {}
    for name, sources in inputs.items():
        for source in sources:
            consumers.setdefault(source, []).append(name)
    out: dict[str, str] = {}
    folded_into: dict[str, str] = {}  # BatchNormalization name -> the conv it was folded into
    for entry in layers:
        name, layer = entry["name"], backbone.get_layer(entry["name"])
        kind = type(layer).__name__
        srcs = [out[s] for s in inputs[name]]
        if kind == "InputLayer":
            out[name] = x
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = layer.padding
            pads = g.const(f"{name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right]))
            out[name] = g.op("Pad", [srcs[0], pads], name, mode="constant")
        elif kind == "Conv2D":
            if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
                raise ExportError(f"{name}: dilated or grouped convolution")
            after = consumers.get(name, [])
            bn = None
            if len(after) == 1 and type(backbone.get_layer(after[0])).__name__ == (
                "BatchNormalization"
            ):
                bn = backbone.get_layer(after[0])
                folded_into[bn.name] = name
            kernel, bias = _folded(layer, bn)
            w, b = g.const(f"{name}/W", kernel), g.const(f"{name}/B", bias)
            out[name] = g.op(
                "Conv", [srcs[0], w, b], name,
                kernel_shape=list(kernel.shape[2:]), strides=list(layer.strides),
                pads=_pads(layer, kernel.shape[2:]),
            )  # fmt: skip
        elif kind == "BatchNormalization":
            if name not in folded_into:
                raise ExportError(f"{name}: a BatchNormalization that follows no convolution")
            out[name] = srcs[0]
        elif kind == "Activation":
            if layer.get_config()["activation"] != "relu":
                raise ExportError(f"{name}: activation {layer.get_config()['activation']!r}")
            out[name] = g.op("Relu", srcs, name)
        elif kind == "MaxPooling2D":
            if layer.padding != "valid":
                raise ExportError(f"{name}: max-pool padding {layer.padding!r}")
            out[name] = g.op(
                "MaxPool", srcs, name,
                kernel_shape=list(layer.pool_size), strides=list(layer.strides),
            )  # fmt: skip
        elif kind == "Add":
            out[name] = g.op("Add", srcs, name)
        elif kind == "GlobalAveragePooling2D":
            pooled = g.op("GlobalAveragePool", srcs, f"{name}/pool")
            out[name] = g.op("Flatten", [pooled], name, axis=1)
        else:
            raise ExportError(f"{name}: a {kind} layer, which this exporter does not write")
    return out[layers[-1]["name"]]


def to_onnx(keras_model) -> Any:
    """The ONNX ModelProto of a model from `appliance.model.build` (trained or not)."""
    from onnx import TensorProto, checker, helper

    size = keras_model.input_shape[1]
    g = _Graph()
    x = g.op("Cast", [INPUT_NAME], "to_float", to=TensorProto.FLOAT)
    norm = keras_model.get_layer("normalize")
    mean = np.asarray(norm.mean, np.float32).reshape(1, 1, 1, -1)
    std = np.sqrt(np.asarray(norm.variance, np.float32)).reshape(1, 1, 1, -1)
    x = g.op("Sub", [x, g.const("normalize/mean", mean)], "normalize/centred")
    x = g.op("Div", [x, g.const("normalize/std", std)], "normalize")
    x = g.op("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    x = _backbone(g, keras_model.get_layer("resnet50"), x)
    dense = keras_model.get_layer("predictions")
    w = g.const("predictions/W", np.asarray(dense.kernel, np.float32))
    b = g.const("predictions/B", np.asarray(dense.bias, np.float32))
    logits = g.op("Gemm", [x, w, b], "logits")
    g.op("Softmax", [logits], OUTPUT_NAME, axis=1)
    graph = helper.make_graph(
        g.nodes,
        "resnet50",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", dense.units])],
        g.weights,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="appliance"
    )
    checker.check_model(proto)
    return proto


def export(keras_model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(keras_model), str(path))
    return path
