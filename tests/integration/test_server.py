"""The inference server over HTTP: real Gunicorn, the real (shipped, trained) ResNet50, no mocks."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import numpy as np
import pytest

from appliance import model
from appliance.ml import onnx_artifact
from appliance.ml.evaluate import balanced_order, decode_samples, label_indices, predict
from appliance.model import CIFAR10_CLASSES

from .server_fixtures import *  # noqa: F403 - the ml_server fixture
from .server_fixtures import Server, encode_image, metric, start_server

pytestmark = pytest.mark.integration

PNG_B64 = encode_image("PNG", seed=1)[1]
JPEG_B64 = encode_image("JPEG", size=(48, 40), seed=2)[1]  # another size: resized to 32x32
NOT_IMAGE_B64 = base64.b64encode(b"hello, not an image").decode()
BROKEN_PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


def assert_prediction(answer: dict, model_id: str) -> None:
    assert answer["label"] in CIFAR10_CLASSES
    assert 0.0 <= answer["confidence"] <= 1.0
    assert answer["model"] == model_id


def test_healthz_is_503_loading_until_the_model_is_loaded_then_200(ml_server: Server) -> None:
    statuses = [status for status, _ in ml_server.health_history]
    assert statuses[0] == 503 and statuses[-1] == 200, ml_server.health_history
    assert ml_server.health_history[0][1] == {"status": "loading"}
    ok = ml_server.get("/healthz")
    assert ok.status_code == 200
    assert ok.json()["status"] == "ok"
    assert ok.json()["model"].startswith("resnet50-")


@pytest.mark.parametrize("image", [PNG_B64, JPEG_B64], ids=["png", "jpeg"])
def test_predict_labels_png_and_jpeg(ml_server: Server, image: str) -> None:
    model_id = ml_server.get("/healthz").json()["model"]
    response = ml_server.post("/predict", {"image": image})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert_prediction(response.json(), model_id)


def test_predict_batch_labels_every_image_in_order(ml_server: Server) -> None:
    model_id = ml_server.get("/healthz").json()["model"]
    single = ml_server.post("/predict", {"image": PNG_B64}).json()
    response = ml_server.post("/predict/batch", {"images": [PNG_B64, JPEG_B64, PNG_B64]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model_id
    assert len(body["predictions"]) == 3
    for answer in body["predictions"]:
        assert_prediction(answer, model_id)
    # The same image gets the same label whether it came alone or in a batch.
    assert body["predictions"][0]["label"] == single["label"]
    assert body["predictions"][0]["confidence"] == pytest.approx(single["confidence"], rel=1e-4)


# (path, body, status, message fragment)
ERRORS = [
    ("/predict", b"{not json", 400, "body is not JSON"),
    ("/predict", b"[1, 2]", 400, "body must be a JSON object"),
    ("/predict", b'{"img": "x"}', 400, "missing field 'image'"),
    ("/predict", b'{"image": 42}', 400, "image: must be a base64 string, got int"),
    ("/predict", b'{"image": "not base64!"}', 400, "image: invalid base64"),
    ("/predict", f'{{"image": "{NOT_IMAGE_B64}"}}'.encode(), 422, "image: not an image"),
    ("/predict", f'{{"image": "{BROKEN_PNG_B64}"}}'.encode(), 422, "not a decodable image"),
    ("/predict/batch", b"{", 400, "body is not JSON"),
    ("/predict/batch", b'{"image": "x"}', 400, "missing field 'images'"),
    ("/predict/batch", b'{"images": "x"}', 400, "field 'images' must be a list"),
    ("/predict/batch", b'{"images": []}', 400, "field 'images' is empty"),
    ("/predict/batch", b'{"images": ["a", "b", "c", "d", "e"]}', 413, "too many images: 5"),
    ("/predict", f'{{"image": "{PNG_B64}", "ground_truth": 3}}'.encode(), 400,
     "field 'ground_truth' must be a class name or null"),
    ("/predict/batch", f'{{"images": ["{PNG_B64}"], "ground_truth": []}}'.encode(), 400,
     "field 'ground_truth' must be a list of 1 class names or nulls"),
    ("/predict/batch", f'{{"images": ["{PNG_B64}"], "ground_truth": [true]}}'.encode(), 400,
     "field 'ground_truth[0]' must be a class name or null"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "message"), ERRORS)
def test_bad_input_gets_a_json_error(
    ml_server: Server, path: str, body: bytes, status: int, message: str
) -> None:
    response = ml_server.post(path, data=body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]


def test_too_many_pixels_is_refused(ml_server: Server) -> None:
    big = encode_image("PNG", size=(100, 100))[1]  # 10,000 pixels, limit 4,096
    response = ml_server.post("/predict", {"image": big})
    assert response.status_code == 422
    assert "too large" in response.json()["error"]
    assert "10000 pixels" in response.json()["error"]


def test_too_many_image_bytes_is_refused(ml_server: Server) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(250_000)  # over MAX_IMAGE_BYTES=200000
    response = ml_server.post("/predict", {"image": base64.b64encode(data).decode()})
    assert response.status_code == 422
    assert "image too large: 250008 bytes" in response.json()["error"]


def test_body_over_the_limit_is_413_json(ml_server: Server) -> None:
    response = ml_server.post("/predict", data=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large: limit is 1048576 bytes"}


@pytest.mark.parametrize(
    ("images", "index", "status", "message"),
    [
        ([PNG_B64, PNG_B64, NOT_IMAGE_B64, PNG_B64], 2, 422, "images[2]: not an image"),
        ([PNG_B64, "%%%"], 1, 400, "images[1]: invalid base64"),
        ([None, PNG_B64], 0, 400, "images[0]: must be a base64 string, got NoneType"),
    ],
)
def test_batch_error_names_the_bad_image(
    ml_server: Server, images: list, index: int, status: int, message: str
) -> None:
    response = ml_server.post("/predict/batch", {"images": images})
    assert response.status_code == status
    body = response.json()
    assert body["index"] == index
    assert body["error"].startswith(message)


def test_unknown_path_and_wrong_method_are_json(ml_server: Server) -> None:
    missing = ml_server.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not found: /nope"}
    wrong = ml_server.get("/predict")
    assert wrong.status_code == 405
    assert "method GET not allowed on /predict" in wrong.json()["error"]
    assert "POST" in wrong.headers["Allow"]


def test_concurrent_requests_share_model_calls(ml_server: Server) -> None:
    before = ml_server.get("/metrics").text
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def client(seed: int) -> None:
        image = encode_image("PNG", seed=seed)[1]
        barrier.wait()
        statuses.append(ml_server.post("/predict", {"image": image}).status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 16
    after = ml_server.get("/metrics").text
    calls = metric(after, "appliance_model_batch_size_count") - metric(
        before, "appliance_model_batch_size_count"
    )
    images = metric(after, "appliance_model_batch_size_sum") - metric(
        before, "appliance_model_batch_size_sum"
    )
    assert images == 16
    # 16 requests released together into a worker with max batch 8 and a 50 ms wait.
    assert calls < 16, f"16 concurrent requests took {calls:.0f} model calls: no batching"
    # Some batch was bigger than 1: not everything landed in the le="1.0" bucket.
    assert metric(after, "appliance_model_batch_size_bucket", le="1.0") < metric(
        after, "appliance_model_batch_size_count"
    )


def test_metrics_count_requests_by_endpoint_and_status(ml_server: Server) -> None:
    ml_server.post("/predict", {"image": PNG_B64})
    ml_server.post("/predict", data=b"nope")
    response = ml_server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    total = "appliance_http_requests_total"
    assert metric(text, total, endpoint="/predict", code="200") >= 1
    assert metric(text, total, endpoint="/predict", code="400") >= 1
    assert metric(text, total, endpoint="/healthz", code="503") >= 1
    assert metric(text, "appliance_http_request_duration_seconds_count", endpoint="/predict") >= 2
    assert metric(text, "appliance_model_call_duration_seconds_count") >= 1
    assert metric(text, "appliance_images_predicted_total") >= 1
    assert metric(text, "appliance_model_ready_workers") == 1


def test_a_model_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    # Metadata present, model file corrupt: the worker's load fails after start.
    broken = tmp_path / "broken"
    (tmp_path / "broken.keras").write_bytes(b"not a keras file")
    (tmp_path / "broken.json").write_text('{"class_names": ["a", "b"], "input_size": 32}')
    server = start_server(broken, tmp_path / "server.log")
    try:
        health = server.wait_health(503, "error")
        assert "model failed to load from" in health["error"]
        predict = server.post("/predict", {"image": PNG_B64})
        assert predict.status_code == 503
        assert "model failed to load" in predict.json()["error"]
        assert "model failed to load" in server.log()
    finally:
        server.stop()


def test_serve_refuses_a_missing_model_naming_the_setting(tmp_path: Path) -> None:
    server = start_server(tmp_path / "absent", tmp_path / "server.log")
    assert server.proc.wait(60) == 2
    assert "MODEL_PATH" in server.log() and "does not exist" in server.log()


def test_serve_refuses_a_malformed_setting_naming_it(model_path: Path, tmp_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log", MAX_BATCH_SIZE="lots")
    assert server.proc.wait(60) == 2
    assert "MAX_BATCH_SIZE must be a number, got 'lots'" in server.log()


def served_labels(server: Server, samples: list, class_names: list[str]) -> list[int]:
    """Each sample's label index as the server gives it, sent with its ground truth."""
    served = []
    for start in range(0, len(samples), 4):  # the fixtures' MAX_BATCH_IMAGES
        images = [base64.b64encode(s.image).decode() for s in samples[start : start + 4]]
        truths = [s.label for s in samples[start : start + 4]]
        response = server.post("/predict/batch", {"images": images, "ground_truth": truths})
        assert response.status_code == 200, response.text
        served += [class_names.index(p["label"]) for p in response.json()["predictions"]]
    return served


def test_served_labels_are_the_artifacts_own_and_as_accurate(
    ml_server: Server, model_path: Path, cifar_test_samples: list
) -> None:
    """1,000 test images over HTTP: the labels the artifact gives in-process, and (for a trained
    model) the accuracy its metadata records, within what a 1,000-image subset can vary."""
    loaded = model.load(model_path)
    truth = label_indices(cifar_test_samples, loaded.class_names)
    chosen = balanced_order(truth, seed=0)[:1000]
    samples = [cifar_test_samples[i] for i in chosen]
    local = predict(loaded.model, decode_samples(samples, loaded.input_size)).argmax(axis=1)
    before = ml_server.get("/metrics").text
    served = served_labels(ml_server, samples, loaded.class_names)
    agree = np.mean(np.array(served) == local)
    accuracy = np.mean(np.array(served) == truth[chosen])
    print(f"served {loaded.model_id}: agrees with in-process on {100 * agree:.1f}%, "
          f"top-1 {100 * accuracy:.1f}% of {len(samples)} test images")  # fmt: skip
    assert agree >= 0.995
    # /metrics tells the same story, per model id: every label checked, the right ones matching.
    after = ml_server.get("/metrics").text
    checked, matching = (
        metric(after, name, model=loaded.model_id) - metric(before, name, model=loaded.model_id)
        for name in (
            "appliance_labels_with_ground_truth_total",
            "appliance_labels_matching_ground_truth_total",
        )
    )
    assert (checked, matching) == (len(samples), int(np.sum(np.array(served) == truth[chosen])))
    recorded = loaded.metadata.test_accuracy
    if loaded.metadata.extra.get("trained") and recorded is not None:
        # A 1,000-image subset of a ~60-90% model: a standard error of about 1.5 points.
        assert abs(accuracy - recorded) <= 0.05, (accuracy, recorded)


def group_libraries(pgid: int) -> str:
    """The shared objects mapped by every process of a process group (the server's)."""
    maps = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp
                maps.append((proc / "maps").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
    return "".join(maps)


@pytest.mark.parametrize("form", ["artifact", "graph"])
def test_the_openvino_backend_labels_as_tensorflow_does(
    form: str, model_path: Path, cifar_test_samples: list, tmp_path: Path
) -> None:
    """The same model served by OpenVINO, from its artifact or from the graph artifact written
    from it (the ml-server image's form): the same model id, and TensorFlow's in-process label
    for at least 99% of 1,000 test images (bfloat16 on a CPU with AMX, float32 elsewhere)."""
    loaded = model.load(model_path)
    truth = label_indices(cifar_test_samples, loaded.class_names)
    chosen = balanced_order(truth, seed=1)[:1000]
    samples = [cifar_test_samples[i] for i in chosen]
    local = predict(loaded.model, decode_samples(samples, loaded.input_size)).argmax(axis=1)
    served_path = model_path
    if form == "graph":
        served_path = tmp_path / "graph" / "resnet50.onnx"
        onnx_artifact.export(model_path, served_path)
    server = start_server(served_path, tmp_path / "server.log", "--backend", "openvino",
                          "--max-batch-size", "8")  # fmt: skip
    try:
        server.wait_ready()
        assert server.get("/healthz").json()["model"] == loaded.model_id
        served = np.array(served_labels(server, samples, loaded.class_names))
        libraries = group_libraries(server.proc.pid)
    finally:
        server.stop()
    agree, accuracy = np.mean(served == local), np.mean(served == truth[chosen])
    print(
        f"openvino served {loaded.model_id} ({form}): agrees with TensorFlow in-process on "
        f"{100 * agree:.1f}%, top-1 {100 * accuracy:.1f}% of {len(samples)} test images"
    )
    assert agree >= 0.99
    assert "inference on openvino" in server.log() and "OpenVINO" in server.log()
    assert "libopenvino" in libraries
    # The graph needs no TensorFlow: what lets the ml-server image leave it out.
    assert ("libtensorflow" in libraries) == (form == "artifact")


def test_an_unknown_backend_is_named(model_path: Path, tmp_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log", BACKEND="tensorrt")
    assert server.proc.wait(60) == 2
    assert "BACKEND must be one of tensorflow, openvino, got 'tensorrt'" in server.log()
