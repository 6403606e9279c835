"""The ResNet50 for CIFAR-10: build it, save it with its metadata, load it back, check both agree.

An artifact is two files side by side: ``NAME.keras`` (the Keras model) or ``NAME.npz`` (its weights
alone, float16: :mod:`appliance.ml.packed`), and ``NAME.json`` (metadata: class names in order,
input size, stem, preprocessing, provenance, the model file's sha256). The server, the containers
and the images all load through :func:`load`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from appliance import __version__
from appliance.contract import LABELS
from appliance.imaging import PREPROCESSING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

CIFAR10_CLASSES = LABELS
# Per-channel statistics of the CIFAR-10 training set (0..255 scale), used inside the model.
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)
# stock: ImageNet's 7x7/2 conv + 3x3/2 max-pool (32x32 -> 8x8 into the first residual stage);
# cifar: 3x3/1 conv, no max-pool (32x32 in); pooled: 3x3/1 conv, the stock max-pool (16x16 in);
# stride1: the stock 7x7 conv at stride 1, the stock max-pool (16x16 in): the stock network's
# weights exactly, so a stock model trains on in it (--init-from) at four times the detail;
# fullres: stride1 without the max-pool (32x32 in): the same weights again, the cifar stem's detail.
STEMS = ("stock", "cifar", "pooled", "stride1", "fullres")


class ModelMetadataError(ValueError):
    """The metadata is missing, malformed or does not match the model; the message says how."""


@dataclass
class Metadata:
    class_names: list[str]
    input_size: int
    stem: str = "stock"
    architecture: str = "keras.applications.ResNet50"
    preprocessing: str = PREPROCESSING
    test_accuracy: float | None = None
    training_data_sha256: str | None = None
    model_sha256: str | None = None
    code_version: str = __version__
    created_at: float = field(default_factory=time.time)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        digest = (self.model_sha256 or "unhashed")[:12]
        return f"resnet50-{self.stem}-{self.input_size}px-{digest}"

    @classmethod
    def from_json(cls, text: str, source: str) -> Metadata:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelMetadataError(f"{source}: not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelMetadataError(f"{source}: expected a JSON object")
        for key in ("class_names", "input_size"):
            if key not in raw:
                raise ModelMetadataError(f"{source}: missing field {key!r}")
        names, size = raw["class_names"], raw["input_size"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ModelMetadataError(f"{source}: class_names must be a non-empty list of strings")
        if not (isinstance(size, int) and size >= 32):
            raise ModelMetadataError(f"{source}: input_size must be an integer >= 32")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# The model file's forms: a whole Keras model, or the weights alone (appliance.ml.packed).
MODEL_SUFFIXES = (".keras", ".npz")
# The graph written from either (appliance.ml.onnx_artifact): served by OpenVINO, never by Keras.
GRAPH_SUFFIX = ".onnx"


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """``X.keras``, ``X.npz``, ``X.onnx`` or ``X`` (or ``X.json``) -> (the model file, ``X.json``).

    For a bare ``X`` the model file is ``X.keras``, or ``X.npz`` when only that one exists.
    """
    path = Path(path)
    if path.suffix in (*MODEL_SUFFIXES, GRAPH_SUFFIX):
        return path, path.with_suffix(".json")
    stem = path.with_suffix("") if path.suffix == ".json" else path
    keras_file, packed_file = stem.with_suffix(".keras"), stem.with_suffix(".npz")
    model_file = packed_file if packed_file.exists() and not keras_file.exists() else keras_file
    return model_file, stem.with_suffix(".json")


def shipped_path() -> Path:
    """The trained model the repository ships (the ml-server image's), in a source checkout."""
    return Path(__file__).resolve().parent.parent / "images/ml-server/model/resnet50.npz"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_sha256(path: Path, recorded: str, meta_path: Path) -> None:
    """Refuse a file whose sha256 is not the one its metadata file records."""
    actual = sha256_file(path)
    if actual != recorded:
        raise ModelMetadataError(
            f"{path}: sha256 {actual} does not match {recorded} recorded in {meta_path.name}"
        )


def refuse_source_metadata(out: str | Path, source: str | Path, advice: str) -> None:
    """Refuse an ``out`` whose metadata file is ``source``'s: X.keras, X.npz and X.onnx share
    X.json, so writing beside the source would overwrite its metadata."""
    shared = artifact_paths(out)[1]
    if shared.resolve() == artifact_paths(source)[1].resolve():
        raise ModelMetadataError(
            f"--out {out}: its metadata file {shared} is the source's; {advice}"
        )


def build(
    input_size: int = 32,
    class_names: tuple[str, ...] | list[str] = CIFAR10_CLASSES,
    stem: str = "stock",
    seed: int = 0,
):
    """A keras.applications ResNet50 (random init) with normalisation in front and a softmax head.

    ``stem="cifar"`` swaps the 7x7/2 first convolution for a 3x3/1 one and drops the max-pool, the
    usual change for 32x32 inputs; ``stem="pooled"`` swaps the convolution alike but keeps the
    max-pool (a quarter of the cifar stem's compute); ``stem="stride1"`` keeps the 7x7
    convolution and the max-pool and only sets the convolution's stride to 1 (the same compute as
    the stock stem on 64x64 upsampled input, with the stock stem's weights); ``stem="fullres"``
    also drops the max-pool (the cifar stem's 32x32 first stage, still the stock stem's weights).
    Every other layer is the stock architecture.
    """
    import keras

    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    keras.utils.set_random_seed(seed)
    shape = (input_size, input_size, 3)
    backbone = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=shape, pooling="avg"
    )
    if stem != "stock":
        small_conv, keep_pool = stem in ("cifar", "pooled"), stem in ("pooled", "stride1")
        backbone = _with_stem(backbone, small_conv, keep_pool)
    _zero_init_residuals(backbone)
    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    x = keras.layers.Normalization(
        mean=list(CIFAR10_MEAN), variance=[s * s for s in CIFAR10_STD], name="normalize"
    )(x)
    x = backbone(x)
    outputs = keras.layers.Dense(
        len(class_names), activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=f"resnet50_{stem}")


def _zero_init_residuals(backbone) -> None:
    """Start every residual branch's last BatchNorm at gamma 0, so each block begins as identity.

    The "zero-init residual" of Goyal et al. (2017) and torchvision: from Keras's init a fresh
    ResNet50 starts with a loss near 4 on 10 classes and its first steps at the usual learning
    rates make it worse; with it the loss falls from the first step. Architecture unchanged.
    """
    for layer in backbone.layers:
        if re.fullmatch(r"conv\d_block\d+_3_bn", layer.name):
            layer.gamma.assign(np.zeros(layer.gamma.shape, dtype="float32"))


def _with_stem(backbone, small_conv: bool, keep_pool: bool):
    """Clone ResNet50 with conv1 at stride 1: 3x3 with ``small_conv`` (new weights' shapes), else
    the stock 7x7 (same padding, same shapes); and, unless kept, the max-pool an identity."""
    import keras

    def replace(layer):
        config = layer.get_config()
        if layer.name == "conv1_pad" and small_conv:
            config["padding"] = ((1, 1), (1, 1))
        elif layer.name == "conv1_conv":
            config["strides"] = (1, 1)
            if small_conv:
                config["kernel_size"] = (3, 3)
        elif keep_pool:
            pass
        elif layer.name == "pool1_pad":
            config["padding"] = ((0, 0), (0, 0))
        elif layer.name == "pool1_pool":
            config.update(pool_size=(1, 1), strides=(1, 1))
        return layer.__class__.from_config(config)

    return keras.models.clone_model(backbone, clone_function=replace)


def save(model, path: str | Path, metadata: Metadata) -> Metadata:
    """Write ``X.keras`` and ``X.json``; the metadata records the model file's sha256."""
    model_path, meta_path = artifact_paths(path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    _check_matches(model, metadata, str(meta_path))
    if model_path.suffix == ".npz":
        from appliance.ml import packed

        packed.save(model, model_path)
    else:
        model.save(model_path)
    metadata.model_sha256 = sha256_file(model_path)
    return write_metadata(model_path, metadata)


def write_metadata(path: str | Path, metadata: Metadata) -> Metadata:
    """``X.json`` alone (the model file is left as it is), e.g. after measuring its accuracy."""
    text = json.dumps(asdict(metadata), indent=2, sort_keys=True) + "\n"
    artifact_paths(path)[1].write_text(text)
    return metadata


def read_metadata(path: str | Path) -> Metadata:
    _, meta_path = artifact_paths(path)
    if not meta_path.exists():
        raise ModelMetadataError(f"{meta_path}: metadata file not found beside the model")
    return Metadata.from_json(meta_path.read_text(), str(meta_path))


class LoadedModel:
    """A Keras model with its metadata; :meth:`predict` is one direct call, never ``predict()``."""

    def __init__(self, model, metadata: Metadata) -> None:
        self.model = model
        self.metadata = metadata
        self.class_names = list(metadata.class_names)
        self.input_size = metadata.input_size
        self.model_id = metadata.model_id

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x S x S x 3 -> float32 N x classes probabilities."""
        return np.asarray(self.model(batch, training=False))

    def labels(self, probs: np.ndarray) -> list[tuple[str, float]]:
        best = probs.argmax(axis=1)
        return [(self.class_names[i], float(probs[n, i])) for n, i in enumerate(best)]


def load(path: str | Path, verify_sha256: bool = True) -> LoadedModel:
    """Load ``X.keras`` with ``X.json``, refusing a model that does not match its metadata."""
    import keras

    model_path, meta_path = artifact_paths(path)
    if model_path.suffix == GRAPH_SUFFIX:
        raise ModelMetadataError(
            f"{model_path}: an ONNX graph, which only the server's openvino backend runs "
            "(BACKEND=openvino); Keras loads the artifact it was written from, X.keras or X.npz"
        )
    metadata = read_metadata(model_path)
    if not model_path.exists():
        raise ModelMetadataError(f"{model_path}: model file not found")
    if verify_sha256 and metadata.model_sha256:
        require_sha256(model_path, metadata.model_sha256, meta_path)
    if model_path.suffix == ".npz":
        from appliance.ml import packed

        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")  # what the weights were stored from
        try:
            model = build(metadata.input_size, metadata.class_names, metadata.stem)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        try:
            packed.load_into(model, model_path, metadata.stem)
        except ValueError as exc:  # pieces.WeightsError: the file is not this model's weights
            raise ModelMetadataError(f"{model_path}: {exc}") from None
    else:
        model = keras.models.load_model(model_path, compile=False)
    _check_matches(model, metadata, str(meta_path))
    return LoadedModel(model, metadata)


def _check_matches(model, metadata: Metadata, source: str) -> None:
    shape = tuple(model.input_shape[1:])
    want = (metadata.input_size, metadata.input_size, 3)
    if shape != want:
        raise ModelMetadataError(
            f"{source}: input_size {metadata.input_size} does not match the model's input "
            f"shape {shape}"
        )
    classes = model.output_shape[-1]
    if classes != len(metadata.class_names):
        raise ModelMetadataError(
            f"{source}: {len(metadata.class_names)} class_names but the model has {classes} outputs"
        )
    # build() names the model after its stem; a model from elsewhere (other name) is not judged.
    built_as = re.fullmatch(r"resnet50_(\w+)", model.name)
    if built_as and built_as.group(1) != metadata.stem:
        raise ModelMetadataError(
            f"{source}: stem {metadata.stem!r} does not match the model, which was built with "
            f"stem {built_as.group(1)!r}"
        )


def create_untrained(path: str | Path, input_size: int = 32, stem: str = "stock") -> Metadata:
    """A freshly initialised model saved through the normal path (tests, smoke runs)."""
    model = build(input_size=input_size, stem=stem)
    metadata = Metadata(
        class_names=list(CIFAR10_CLASSES),
        input_size=input_size,
        stem=stem,
        extra={"trained": False},
    )
    return save(model, path, metadata)
