"""The ONNX graph written from the weights computes what the Keras model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance import model
from appliance.ml import onnx_export

ort = pytest.importorskip("onnxruntime", reason="the runtimes extra (make venv installs it)")


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {onnx_export.INPUT_NAME: images})[0]


@pytest.mark.parametrize("stem", ["stock", "stride1", "cifar"])
def test_onnx_outputs_equal_the_keras_models(stem: str, tmp_path: Path) -> None:
    net = model.build(32, stem=stem, seed=3)
    # Give every BatchNormalization statistics of its own, so that folding them is tested.
    rng = np.random.default_rng(0)
    for layer in net.get_layer("resnet50").layers:
        if type(layer).__name__ == "BatchNormalization":
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.1, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, shape).astype("float32"))
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    path = onnx_export.export(net, tmp_path / "model.onnx")
    expected = net(images, training=False).numpy()
    got = run_onnx(path, images)
    assert got.shape == (16, 10)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_a_layer_it_does_not_write_is_named() -> None:
    import keras

    net = model.build(32, stem="stock")
    backbone = net.get_layer("resnet50")

    def swap(layer):
        if layer.name == "conv1_relu":
            return keras.layers.Activation("gelu", name="conv1_relu")
        return layer.__class__.from_config(layer.get_config())

    changed = keras.models.clone_model(backbone, clone_function=swap)
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = net.get_layer("normalize")(net.get_layer("to_float")(inputs))
    outputs = net.get_layer("predictions")(changed(x))
    with pytest.raises(onnx_export.ExportError, match="conv1_relu: activation 'gelu'"):
        onnx_export.to_onnx(keras.Model(inputs, outputs))
