"""`appliance model fetch`: an artifact from a URL or path, kept only when it is the one asked for.

The sha256 of the ``.keras`` file is given by whoever publishes it; the metadata must agree, and the
model must load, before anything replaces what ``out`` held.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from appliance.model import Metadata, artifact_paths, load

log = logging.getLogger(__name__)


class ModelFetchError(ValueError):
    """An artifact could not be fetched, or is not the one asked for; nothing was kept."""


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def artifact_sources(source: str) -> tuple[str, str]:
    """A URL or path of ``X.keras`` (or ``X``) -> the (``X.keras``, ``X.json``) URLs or paths."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https", "file"):
        path = parts.path[: -len(".keras")] if parts.path.endswith(".keras") else parts.path
        return tuple(  # type: ignore[return-value]
            urllib.parse.urlunsplit(parts._replace(path=path + suffix))
            for suffix in (".keras", ".json")
        )
    model_path, meta_path = artifact_paths(source)
    return str(model_path), str(meta_path)


def _open(source: str, timeout: float) -> BinaryIO:
    if urllib.parse.urlsplit(source).scheme in ("http", "https", "file"):
        return urllib.request.urlopen(source, timeout=timeout)
    return Path(source).open("rb")


def _copy(source: str, dest: Path, timeout: float) -> str:
    """Copy one file from a URL or path to ``dest``, returning its sha256."""
    digest = hashlib.sha256()
    try:
        with _open(source, timeout) as src, dest.open("wb") as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
    except urllib.error.HTTPError as exc:
        raise ModelFetchError(f"{source}: HTTP {exc.code} {exc.reason}; nothing kept") from None
    except OSError as exc:
        raise ModelFetchError(f"cannot fetch {source}: {exc}; nothing kept") from None
    return digest.hexdigest()


def fetch(
    source: str, sha256: str, out: str | Path, verify: bool = True, timeout: float = 60.0
) -> Metadata:
    """Fetch ``X.keras`` and ``X.json`` from a URL or path into ``out`` (``Y.keras`` + ``Y.json``).

    ``sha256`` is that of the ``.keras`` file. Both files land in a temporary folder beside
    ``out`` first; only when the digest matches, the metadata agrees with it and (``verify``) the
    model loads and matches its metadata, do they replace ``out``. Otherwise nothing is kept and
    an artifact already at ``out`` is left as it was.
    """
    expected = sha256.strip().lower()
    if not SHA256_HEX.fullmatch(expected):
        raise ModelFetchError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    src_model, src_meta = artifact_sources(source)
    dest_model, dest_meta = artifact_paths(out)
    dest_model.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_model.parent))
    try:
        staged_model, staged_meta = artifact_paths(staging / dest_model.name)
        log.info("fetching %s", src_model)
        actual = _copy(src_model, staged_model, timeout)
        if actual != expected:
            raise ModelFetchError(
                f"{src_model}: sha256 {actual} does not match the expected {expected}; nothing kept"
            )
        _copy(src_meta, staged_meta, timeout)
        metadata = Metadata.from_json(staged_meta.read_text(), src_meta)
        if metadata.model_sha256 and metadata.model_sha256 != expected:
            raise ModelFetchError(
                f"{src_meta}: records model sha256 {metadata.model_sha256}, not the expected "
                f"{expected}: the metadata belongs to another model; nothing kept"
            )
        if verify:
            load(staged_model)  # the model must load and match its metadata before it is kept
        os.replace(staged_meta, dest_meta)
        os.replace(staged_model, dest_model)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata
