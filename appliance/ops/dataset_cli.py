"""`appliance dataset pack SOURCE --out FILE.tar.gz`: one split of a camera source, as a file.

The producer image carries the CIFAR-10 test split made this way (images/producer), so a booted
camera VM needs no internet: any source `appliance produce` reads (the official download, a
folder, a .tar.gz) goes in, a folder-layout .tar.gz that `appliance produce --source` reads comes
out.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from appliance import datasets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pack = sub.add_parser("pack", help="write one split of a source as a folder-layout .tar.gz")
    pack.add_argument("source", help="'cifar10' (official archive), a folder, or a .tar.gz")
    pack.add_argument("--split", choices=datasets.SPLITS, default="test")
    pack.add_argument("--out", type=Path, required=True, help="the .tar.gz to write")


def run(args: argparse.Namespace) -> int:
    try:
        samples = datasets.load(args.source, args.split)
    except datasets.DatasetError as exc:
        print(f"appliance dataset: {exc}", file=sys.stderr)
        return 2
    out = datasets.pack(samples, args.out, args.split)
    classes = Counter(s.label for s in samples)
    print(
        f"{out}: {len(samples)} images, {len(classes)} classes, {out.stat().st_size / 1e6:.1f} MB"
    )
    return 0
