"""The MongoDB-protocol server: `mongod` when one is on PATH, otherwise FerretDB with its SQLite
backend, built once from the Go module proxy (patched, version-checked, cached); their commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TextIO

from appliance.ops.services.config import (
    FERRETDB_MODULE,
    FERRETDB_VERSION,
    HOST,
    MONGODB_AUTH_DB,
    MONGODB_USER,
    ServiceError,
    ServicesConfig,
)
from appliance.ops.services.tools import GO, _cache_lock, find_tool, run_step

# FerretDB 1.24's SQLite backend indexes _id as `_ferretdb_sjson->"_id"` but looks documents up
# by `_ferretdb_sjson->'$._id'`: the same value, but SQLite matches index expressions by their
# text, so every find, update and delete by _id scanned the whole table (the DB consumer's
# upserts slowed as the collection grew). The build makes the lookup use the index's expression.
FERRETDB_ID_LOOKUP = ("IDColumn = DefaultColumn + \"->'$._id'\"",
                      'IDColumn = DefaultColumn + `->"_id"`')  # fmt: skip
FERRETDB_PATCH_LEVEL = "p1"  # in the cached binary's name: a new patch rebuilds it


def ferretdb_command(binary: Path, config: ServicesConfig) -> list[str]:
    data = config.mongodb_dir / "data"
    return [
        str(binary),
        "--handler=sqlite",
        # FerretDB wants a directory URI ending in a slash: one SQLite file per database.
        f"--sqlite-url=file:{data}/",
        # TLS only, with a certificate from the stack's CA: no plain listener at all.
        "--listen-addr=",
        f"--listen-tls={HOST}:{config.mongodb_port}",
        f"--listen-tls-cert-file={config.mongodb_cert_file}",
        f"--listen-tls-key-file={config.mongodb_key_file}",
        f"--state-dir={config.mongodb_dir}",
        "--telemetry=disable",
        # Its metrics/pprof listener defaults to 127.0.0.1:8088, which two stacks would fight over.
        "--debug-addr=-",
        "--log-level=INFO",
        # SCRAM authentication; the user is made on the first start, on an empty data directory.
        # Its password comes in FERRETDB_SETUP_PASSWORD (ferretdb_env), not on the command line.
        "--test-enable-new-auth",
        f"--setup-username={MONGODB_USER}",
        f"--setup-database={MONGODB_AUTH_DB}",
    ]


def ferretdb_env(config: ServicesConfig) -> dict[str, str]:
    return {"FERRETDB_SETUP_PASSWORD": config.password_file.read_text().strip()}


def mongod_command(mongod: str, config: ServicesConfig) -> list[str]:
    return [
        mongod,
        "--bind_ip",
        HOST,
        "--port",
        str(config.mongodb_port),
        "--dbpath",
        str(config.mongodb_dir / "data"),
    ]


def ferretdb_binary(cache_dir: Path) -> Path:
    return cache_dir / "bin" / f"ferretdb-{FERRETDB_VERSION}-{FERRETDB_PATCH_LEVEL}"


def ensure_ferretdb(cache_dir: Path, go: str | None, out: TextIO) -> Path:
    """FerretDB built from the Go module proxy once, cached as bin/ferretdb-<version>.

    Not `go install …@version`: FerretDB's module zip lacks the generated build/version/version.txt,
    and such a binary panics at start-up ("Invalid build/version/version.txt file content"). So the
    module source is downloaded, copied, given that file (as FerretDB's own `task gen-version`
    would) and built with its own go.mod and go.sum, which is what `go install` would use too.
    """
    binary = ferretdb_binary(cache_dir)
    if binary.exists():
        return binary
    if go is None:
        go = find_tool(GO)
    with _cache_lock(cache_dir, f"ferretdb-{FERRETDB_VERSION}"):
        if binary.exists():
            return binary
        build_dir = cache_dir / "build"
        build_dir.mkdir(parents=True, exist_ok=True)
        log_path = build_dir / f"ferretdb-{FERRETDB_VERSION}.log"
        start = time.monotonic()
        source = _ferretdb_source(go, build_dir, log_path, out)
        partial = binary.with_name(binary.name + ".partial")
        binary.parent.mkdir(parents=True, exist_ok=True)
        command = [
            go,
            "build",
            "-trimpath",
            "-buildvcs=false",
            "-o",
            str(partial),
            "./cmd/ferretdb",
        ]
        what = f"building FerretDB {FERRETDB_VERSION}"
        note = "first time only, a few minutes"
        run_step(what, command, cwd=source, log_path=log_path, out=out, env=_go_env(), note=note)
        _check_ferretdb_version(partial)
        partial.replace(binary)
        shutil.rmtree(source, ignore_errors=True)
        print(f"FerretDB ready in {time.monotonic() - start:.0f}s: {binary}", file=out, flush=True)
    return binary


def _go_env() -> dict[str, str]:
    # GOFLAGS from the user's shell (say -mod=vendor) would break a build of someone else's module.
    return {**os.environ, "GOFLAGS": "-mod=mod"}


def _ferretdb_source(go: str, build_dir: Path, log_path: Path, out: TextIO) -> Path:
    """A writable copy of the FerretDB module source with its version file in place."""
    what = f"downloading {FERRETDB_MODULE}@{FERRETDB_VERSION} from the Go module proxy"
    print(f"{what} ...", file=out, flush=True)
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        cwd=build_dir,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    with open(log_path, "a") as log_file:
        log_file.write(result.stdout + result.stderr)
    try:
        module_dir = Path(json.loads(result.stdout)["Dir"])
    except (ValueError, KeyError):
        raise ServiceError(
            f"{what} failed (exit {result.returncode}):\n{result.stderr.strip() or result.stdout}"
        ) from None
    source = build_dir / f"ferretdb-{FERRETDB_VERSION}-src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(module_dir, source)
    _make_writable(source)  # the module cache is read-only, and so is a copy of it
    (source / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
    _patch_id_lookup(source / "internal" / "backends" / "sqlite" / "metadata" / "metadata.go")
    return source


def _patch_id_lookup(path: Path) -> None:
    """See FERRETDB_ID_LOOKUP; refuses a source that does not read as expected."""
    old, new = FERRETDB_ID_LOOKUP
    text = path.read_text()
    if text.count(old) != 1:
        raise ServiceError(f"cannot patch FerretDB's _id lookup: {path} has no line `{old}`")
    path.write_text(text.replace(old, new))


def _make_writable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def _check_ferretdb_version(binary: Path) -> None:
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0 or f"version: {FERRETDB_VERSION}" not in result.stdout:
        raise ServiceError(
            f"the FerretDB binary built at {binary} does not run:\n{result.stdout}{result.stderr}"
        )
