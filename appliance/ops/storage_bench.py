"""`appliance bench storage`: how the database's write and lookup rates hold up as the collection
grows, with the DB consumer's own write pattern (upserts by _id in bulks of 50).

For each size step it grows the collection to that many documents (new images: upserts of new
ids), then updates existing documents (labels: ``$set`` of a prediction on random stored ids) and
looks documents up by _id. Given several MongoDB URIs it runs each in turn and prints each one's
rates against the first's, so a change to the server (a build, a backend) is a measured ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from appliance.pipeline.consumer_db import Update, write
from appliance.pipeline.peers import mongodb_address

DEFAULT_SIZES = (1000, 5000, 20000)
DEFAULT_IMAGE_BYTES = 3000  # a CIFAR-10 JPEG is 1-3 KB
PROBES = 500  # updates and lookups measured at each step


@dataclass
class Step:
    size: int
    inserts_per_s: float  # upserts of new ids, while growing to ``size``
    updates_per_s: float  # upserts of existing ids (a label on a stored image)
    lookup_ms: float  # find_one by _id, mean


def add_arguments(sub: Any) -> None:
    storage = sub.add_parser("storage", help="database write and lookup rates as it grows")
    add = storage.add_argument
    add("--uri", action="append",
        help="MongoDB URI (repeatable; default: MONGODB_URI, else the local services)")  # fmt: skip
    add(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="collection sizes, comma-separated",
    )
    add("--image-bytes", type=int, default=DEFAULT_IMAGE_BYTES, help="bytes of image per document")
    add("--database", default="appliance_bench", help="database for the throwaway collection")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be whole numbers, comma-separated, got {text!r}") from None
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise ValueError(f"--sizes must rise and be positive, got {text!r}")
    return sizes


def _updates(ids: list[str], fields: dict[str, Any], arrival: str) -> dict[str, Update]:
    """One merged update per id, as the DB consumer builds them (``consumer_db.updates_for``)."""
    return {i: Update(fields, {arrival}) for i in ids}


def measure(collection: Any, sizes: list[int], image_bytes: int, label: str) -> list[Step]:
    from bson import Binary

    image = {"image": Binary(os.urandom(image_bytes)), "device_id": "bench"}
    ids: list[str] = []
    steps = []
    rng = random.Random(0)
    with tqdm(total=sizes[-1], unit="doc", desc=label, file=sys.stderr) as bar:
        for size in sizes:
            new = [str(uuid.uuid4()) for _ in range(size - len(ids))]
            began = time.perf_counter()
            for start in range(0, len(new), 500):
                part = new[start : start + 500]
                write(collection, _updates(part, image, "stored_at"))
                bar.update(len(part))
            inserts = len(new) / (time.perf_counter() - began)
            ids += new
            probe = rng.sample(ids, min(PROBES, len(ids)))
            began = time.perf_counter()
            label = {"prediction": {"label": "cat", "confidence": 0.5}}
            write(collection, _updates(probe, label, "labelled_at"))
            updates = len(probe) / (time.perf_counter() - began)
            began = time.perf_counter()
            for image_id in probe[:100]:
                collection.find_one({"_id": image_id}, {"_id": 1})
            lookup_ms = (time.perf_counter() - began) / len(probe[:100]) * 1000
            steps.append(Step(size, inserts, updates, lookup_ms))
    return steps


def table(results: list[tuple[str, list[Step]]]) -> list[str]:
    """One row per server and size; the ratios are against the first server's same size."""
    first = results[0][1]
    lines = [f"{'server':<28} {'docs':>7} {'inserts/s':>10} {'updates/s':>10} {'lookup ms':>10}"
             f" {'x inserts':>10} {'x updates':>10}"]  # fmt: skip
    for uri, steps in results:
        for step, base in zip(steps, first, strict=True):
            lines.append(
                f"{mongodb_address(uri)[-28:]:<28} {step.size:>7} {step.inserts_per_s:>10.0f} "
                f"{step.updates_per_s:>10.0f} {step.lookup_ms:>10.2f} "
                f"{step.inserts_per_s / base.inserts_per_s:>10.2f} "
                f"{step.updates_per_s / base.updates_per_s:>10.2f}"
            )
    return lines


def default_uri() -> str:
    """MONGODB_URI when set, else the local services' (with their password)."""
    from appliance.ops.services import ServicesConfig

    return os.environ.get("MONGODB_URI") or ServicesConfig.from_env().endpoints.mongodb_uri


def run(args: argparse.Namespace) -> int:
    from pymongo import MongoClient

    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        print(f"bench storage: {exc}", file=sys.stderr)
        return 2
    uris = args.uri or [default_uri()]
    results: list[tuple[str, list[Step]]] = []  # a URI given twice is measured twice
    for uri in uris:
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10000)
        collection = client[args.database][f"images_{uuid.uuid4().hex[:8]}"]
        try:
            label = mongodb_address(uri)[-28:]
            results.append((uri, measure(collection, sizes, args.image_bytes, label)))
        finally:
            collection.drop()
            client.close()
    print("\n".join(table(results)))
    return 0
