"""Where camera images come from: the official CIFAR-10 archive, an image folder, or its .tar.gz.

Every source yields :class:`Sample` (encoded PNG/JPEG bytes plus the class name), so the producer
and training read all three the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test", "all")


class DatasetError(ValueError):
    """The source is missing, unreadable or not in a known layout; the message says which."""


@dataclass(frozen=True)
class Sample:
    name: str  # where it came from, for messages
    image: bytes  # PNG or JPEG file bytes
    label: str


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "appliance" / "datasets"


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` once, showing progress; the MD5 must match or nothing is kept."""
    if dest.exists() and md5_file(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {url}: {exc}") from None
    actual = md5_file(partial)
    if actual != md5:
        partial.unlink()
        raise DatasetError(f"{url}: MD5 {actual} does not match the expected {md5}")
    partial.replace(dest)
    return dest


def is_cifar_python_archive(path: Path) -> bool:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            return member.name.split("/")[0] == CIFAR10_DIR
    return False


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def iter_cifar_python(path: Path, split: str) -> Iterator[Sample]:
    """The official python pickles: 3072-byte channel-planar rows, encoded here as PNG."""
    wanted = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "all": [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
    }[split]
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name.split("/")[-1]: m for m in tar.getmembers() if m.isfile()}
        if "batches.meta" not in members:
            raise DatasetError(f"{path}: no {CIFAR10_DIR}/batches.meta: not a CIFAR-10 archive")
        meta = pickle.load(tar.extractfile(members["batches.meta"]), encoding="bytes")
        names = [n.decode() for n in meta[b"label_names"]]
        for batch_name in wanted:
            if batch_name not in members:
                raise DatasetError(f"{path}: {batch_name} missing from the archive")
            batch = pickle.load(tar.extractfile(members[batch_name]), encoding="bytes")
            rows = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            for i, (row, label) in enumerate(zip(rows, batch[b"labels"], strict=True)):
                yield Sample(f"{batch_name}[{i}]", _png(row.transpose(1, 2, 0)), names[label])


def _split_parts(parts: list[str], split: str) -> list[str] | None:
    """Strip a leading train/ or test/ level; None if the file is outside the chosen split."""
    if parts and parts[0] in ("train", "test"):
        if split != "all" and parts[0] != split:
            return None
        return parts[1:]
    return parts


def iter_folder(root: Path, split: str) -> Iterator[Sample]:
    """``root/<class>/*.jpg`` or ``root/{train,test}/<class>/*.jpg``; the folder names the class."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        parts = _split_parts(list(path.relative_to(root).parts), split)
        if parts is None or len(parts) < 2:
            continue
        yield Sample(str(path), path.read_bytes(), parts[-2])


def iter_folder_tarball(path: Path, split: str) -> Iterator[Sample]:
    """The same layout as :func:`iter_folder`, read straight from a .tar.gz without unpacking."""
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            # An archive of a folder may have one wrapping directory (e.g. cifar10-jpg/train/...).
            if len(parts) > 3 and parts[1] in ("train", "test"):
                parts = parts[1:]
            parts = _split_parts(parts, split)
            if parts is None or len(parts) < 2:
                continue
            data = tar.extractfile(member)
            if data is not None:
                yield Sample(member.name, data.read(), parts[-2])


def load(
    source: str,
    split: str = "test",
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> list[Sample]:
    """Read every sample of ``source``: ``cifar10`` (official download), a folder, or a .tar.gz."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "cifar10":
        archive = download(url, cache_dir() / Path(url).name, md5)
        samples = list(iter_cifar_python(archive, split))
    else:
        path = Path(source)
        if path.is_dir():
            samples = list(iter_folder(path, split))
        elif path.is_file():
            try:
                cifar = is_cifar_python_archive(path)
            except tarfile.TarError as exc:
                raise DatasetError(f"{path}: not a .tar.gz archive: {exc}") from None
            reader = iter_cifar_python if cifar else iter_folder_tarball
            samples = list(reader(path, split))
        else:
            raise DatasetError(f"{source}: no such file or folder (or use 'cifar10')")
    if not samples:
        raise DatasetError(f"{source}: no PNG/JPEG images in class folders for split {split!r}")
    return samples


def _suffix(image: bytes) -> str:
    return ".png" if image.startswith(b"\x89PNG") else ".jpg"


def pack(samples: list[Sample], out: Path, split: str) -> Path:
    """Write ``samples`` as a folder-layout .tar.gz (``SPLIT/<class>/NNNNN.jpg``) that :func:`load`
    reads back as they are. Reproducible: sorted, fixed owners and times, so one source gives the
    same bytes (and the same container layer) every time.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    per_class: dict[str, int] = {}
    # gzip's own header carries a time and a file name too: neither here.
    with (
        partial.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for sample in sorted(samples, key=lambda s: (s.label, s.name)):
            index = per_class.get(sample.label, 0)
            per_class[sample.label] = index + 1
            info = tarfile.TarInfo(f"{split}/{sample.label}/{index:05d}{_suffix(sample.image)}")
            info.size, info.mtime, info.mode = len(sample.image), 0, 0o644
            tar.addfile(info, io.BytesIO(sample.image))
    partial.replace(out)
    return out
