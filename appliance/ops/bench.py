"""`appliance bench`: benchmarks that print figures, each a module of its own."""

from __future__ import annotations

import argparse

from appliance.ops import pipeline_bench, producer_bench, runtime_bench, serve_bench, storage_bench

BENCHMARKS = {
    "serve": serve_bench,
    "storage": storage_bench,
    "pipeline": pipeline_bench,
    "producer": producer_bench,
    "runtimes": runtime_bench,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for module in BENCHMARKS.values():
        module.add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.bench].run(args)
