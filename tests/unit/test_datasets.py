import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance import datasets
from appliance.model import CIFAR10_CLASSES


def add_pickle(tar: tarfile.TarFile, name: str, obj: object) -> None:
    data = pickle.dumps(obj)
    info = tarfile.TarInfo(f"{datasets.CIFAR10_DIR}/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_archive(path: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """A small archive in the official format: pickled dicts of channel-planar uint8 rows."""
    rng = np.random.default_rng(0)
    rows = {}
    with tarfile.open(path, "w:gz") as tar:
        add_pickle(tar, "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
            add_pickle(tar, name, {b"data": data, b"labels": labels})
            rows[name] = (data, labels)
    return rows


def test_official_archive_layout_decodes_to_the_same_pixels(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    rows = write_cifar_archive(archive)
    test = datasets.load(str(archive), "test")
    data, labels = rows["test_batch"]
    assert [s.label for s in test] == [CIFAR10_CLASSES[i] for i in labels]
    pixels = np.asarray(Image.open(io.BytesIO(test[0].image)))
    assert pixels.shape == (32, 32, 3)
    # Row layout is 1024 red, 1024 green, 1024 blue, each row-major.
    assert np.array_equal(pixels, data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert len(datasets.load(str(archive), "train")) == 15
    assert len(datasets.load(str(archive), "all")) == 18


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_download_checks_md5_and_caches(http_root, tmp_path, monkeypatch):
    root, base = http_root
    write_cifar_archive(root / "cifar-10-python.tar.gz")
    md5 = hashlib.md5((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"{base}/cifar-10-python.tar.gz"

    samples = datasets.load("cifar10", "test", url=url, md5=md5)
    assert len(samples) == 3
    cached = tmp_path / "cache" / "appliance" / "datasets" / "cifar-10-python.tar.gz"
    assert cached.exists()
    (root / "cifar-10-python.tar.gz").unlink()  # a second load must not need the network
    assert len(datasets.load("cifar10", "test", url=url, md5=md5)) == 3


def test_download_with_wrong_md5_keeps_nothing(http_root, tmp_path):
    root, base = http_root
    (root / "file.tar.gz").write_bytes(b"corrupted")
    dest = tmp_path / "out" / "file.tar.gz"
    with pytest.raises(datasets.DatasetError, match=r"MD5 \w+ does not match"):
        datasets.download(f"{base}/file.tar.gz", dest, "0" * 32)
    assert not dest.exists()
    assert not list(dest.parent.iterdir())


def test_unreachable_download_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="cannot download"):
        datasets.download("http://127.0.0.1:9/x.tar.gz", tmp_path / "x.tar.gz", "0" * 32, 2)


def make_folder(root: Path) -> None:
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "ship"))):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (32, 32), (i, 0, 0)).save(root / split / cls / f"{i}.jpg")
    (root / "README.txt").write_text("not an image")


def test_folder_and_tarball_give_the_same_samples(tmp_path):
    root = tmp_path / "images"
    make_folder(root)
    tarball = tmp_path / "images.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname="images")
    for source in (root, tarball):
        test = datasets.load(str(source), "test")
        assert sorted(s.label for s in test) == ["cat", "cat", "ship", "ship"]
        assert len(datasets.load(str(source), "all")) == 8
    from_dir = sorted(s.image for s in datasets.load(str(root), "train"))
    from_tar = sorted(s.image for s in datasets.load(str(tarball), "train"))
    assert from_dir == from_tar


def test_class_folders_without_split_level(tmp_path):
    (tmp_path / "frog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "frog" / "a.png")
    assert [s.label for s in datasets.load(str(tmp_path), "test")] == ["frog"]


@pytest.mark.parametrize("source", ["/nonexistent/x", "EMPTY", "NOT_TAR"])
def test_bad_sources_are_named(tmp_path, source):
    if source == "EMPTY":
        source = str(tmp_path)
    elif source == "NOT_TAR":
        (tmp_path / "x.tar.gz").write_bytes(b"nope")
        source = str(tmp_path / "x.tar.gz")
    with pytest.raises(datasets.DatasetError, match=source.rstrip("/").split("/")[-1]):
        datasets.load(source, "test")


def test_pack_round_trips_and_is_reproducible(tmp_path):
    """The producer image's camera file: read back as it went in, the same bytes every time."""
    make_folder(tmp_path / "src")
    samples = datasets.load(str(tmp_path / "src"), "test")
    first = datasets.pack(samples, tmp_path / "a.tar.gz", "test")
    second = datasets.pack(list(reversed(samples)), tmp_path / "b.tar.gz", "test")
    assert first.read_bytes() == second.read_bytes()
    back = datasets.load(str(first), "test")
    assert sorted((s.label, s.image) for s in back) == sorted((s.label, s.image) for s in samples)
    # Nothing of the train split went in.
    with pytest.raises(datasets.DatasetError, match="no PNG/JPEG"):
        datasets.load(str(first), "train")
