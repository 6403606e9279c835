"""A finished run's artifact: the test split's top-1, and the metadata that records the run."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance import datasets, model
from appliance.ml.evaluate import balanced_order, evaluate, label_indices
from appliance.ml.recipe import Recipe
from appliance.ml.training_data import DATA_SHA256_METHOD

log = logging.getLogger("appliance.ml.train")  # the run's own logger


def export(
    net,
    recipe: Recipe,
    args: argparse.Namespace,
    state: dict[str, Any],
    out: Path,
    policy: str,
    train_names: set[str],
) -> model.Metadata:
    """Evaluate on the test split (when the source has one) and save the artifact."""
    report = None
    try:
        test = datasets.load(args.data, "test")
    except datasets.DatasetError as exc:
        log.warning("no test split (%s): test accuracy not measured", exc)
        test = []
    if any(s.name in train_names for s in test):
        # A folder of class folders without train/ and test/ serves the same images to both.
        log.warning("%s has no separate test split: test accuracy not measured", args.data)
    elif test:
        if args.test_limit:
            truth = label_indices(test, model.CIFAR10_CLASSES)
            test = [test[i] for i in balanced_order(truth, recipe.seed)[: args.test_limit]]
        log.info("evaluating on %d test images", len(test))
        report = evaluate(net, test, model.CIFAR10_CLASSES, recipe.input_size)
        log.info("test top-1 %.2f%% (%d/%d)", 100 * report.top1, report.correct, report.total)
    metadata = model.Metadata(
        class_names=list(model.CIFAR10_CLASSES),
        input_size=recipe.input_size,
        stem=recipe.stem,
        test_accuracy=report.top1 if report else None,
        training_data_sha256=recipe.data_sha256,
        extra={
            "trained": True,
            "training_data": args.data,
            "training_data_sha256_method": DATA_SHA256_METHOD,
            "epochs": state["epoch"],
            "training_seconds": round(state["training_seconds"], 1),
            "train_images": recipe.limit or "all",
            "test_images": report.total if report else 0,
            "precision": policy if policy == "float32" else f"{policy} (saved as float32)",
            "optimizer": (
                f"SGD momentum {recipe.momentum} nesterov, weight decay {recipe.weight_decay} "
                f"(not BatchNorm/bias), peak lr {recipe.peak_lr:g}, linear warmup "
                f"{recipe.warmup_epochs:g} epochs then {recipe.schedule} to 0"
            ),
            "augmentation": recipe.augmentation,
            "recipe": asdict(recipe),
            "history": state["history"],
            **lineage(state),
        },
    )
    return model.save(net, out, metadata)


def lineage(state: dict[str, Any]) -> dict[str, Any]:
    """For a run that started from another artifact: that artifact, and the epochs of both."""
    init = state.get("init_from")
    if not init:
        return {}
    return {"init_from": init, "total_epochs": (init.get("epochs") or 0) + state["epoch"]}
