"""`appliance train`: the ResNet50 on CIFAR-10, reproducible, resumable at any step.

- Data and batches: :mod:`appliance.ml.training_data` (seeded per epoch and step).
- Recipe: SGD, momentum 0.9, Nesterov, decoupled weight decay 5e-4 (not on BatchNorm or biases),
  label smoothing 0.1, linear warmup then cosine (or linear) decay to zero, peak LR 0.1 per 128
  images; ``--init-from`` starts from a trained artifact's weights instead of random ones.
- Precision: mixed float16 on a GPU, float32 on a CPU (float16 is slower there), or mixed
  bfloat16 by choice (oneDNN runs it on CPUs with AVX512_BF16 or AMX); the artifact is always
  float32 so it serves anywhere.
- Resume: every ``--checkpoint-minutes`` and after every epoch the model and optimizer state go
  to ``X.ckpt/`` beside ``--out`` (:mod:`appliance.ml.checkpoints`); running the same command
  again continues from that step. SIGINT or SIGTERM stops it after the step under way, with a
  checkpoint of that step (:mod:`appliance.ml.stopping`).
- Go/no-go: after every epoch a class-balanced probe of the test split is scored; with
  ``--go-no-go EPOCH:ACCURACY`` a run that is not on track stops there, its checkpoint kept.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance import datasets, model
from appliance.ml.checkpoints import (
    checkpoint_dir,
    read_state,
    recipe_differences,
    write_state,
)
from appliance.ml.compiled import (
    POLICIES,
    build_compiled,
    export_copy,
    precision_policy,
    use_xla,
)
from appliance.ml.evaluate import EvaluationError, balanced_order, label_indices
from appliance.ml.progress import GoNoGo, Probe, make_progress
from appliance.ml.recipe import Recipe, TrainingError
from appliance.ml.stopping import stop_on_signals
from appliance.ml.trained_artifact import export
from appliance.ml.training_data import (
    data_sha256,
    load_training_data,
    training_dataset,
    validation_dataset,
)

log = logging.getLogger(__name__)

DEFAULT_OUT = "build/model/resnet50.keras"
DEFAULT_STEM = "cifar"  # see add_arguments: the stem that can reach 90% at 32x32
DEFAULT_CHECKPOINT_MINUTES = 15.0
DEFAULT_PROBE_IMAGES = 1000
SCHEDULES = ("cosine", "linear")
EXIT_NO_GO = 3  # the go/no-go check stopped the run


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", default="cifar10", help="cifar10 (official download), a folder or its .tar.gz")
    add("--out", type=Path, default=Path(DEFAULT_OUT), help="artifact (default %(default)s)")
    add("--epochs", type=int, default=30, help="total epochs (default %(default)s)")
    add("--batch-size", type=int, default=128)
    add(
        "--stem",
        choices=model.STEMS,
        default=DEFAULT_STEM,
        help="cifar (default): 3x3 stride-1 first conv, no max-pool, keeps the 32x32 detail (the "
        "variant that can reach 90%%+); stock: the ImageNet 7x7/2 conv + max-pool, which shrinks "
        "32x32 to 8x8 first: ~40x faster inference and ~3x cheaper training on a CPU, far less "
        "accurate",
    )
    add("--input-size", type=int, default=32)
    add("--lr", type=float, help="peak learning rate (default 0.1 x batch-size / 128)")
    add("--warmup-epochs", type=float, default=2.0)
    add(
        "--schedule",
        choices=SCHEDULES,
        default="cosine",
        help="after the warmup: cosine (default) or linear decay to zero (short runs)",
    )
    add("--weight-decay", type=float, default=5e-4)
    add("--label-smoothing", type=float, default=0.1)
    add(
        "--cutout",
        type=int,
        default=0,
        metavar="PX",
        help="zero a PX x PX square at a random place in each training image (Cutout; 16 is the "
        "usual side at 32x32): a regulariser for long runs; 0 (default): none",
    )
    add("--seed", type=int, default=0, help="weights init, data order and augmentation")
    add("--limit", type=int, help="train on a class-balanced subset of N images (quick runs)")
    add("--val-split", type=float, default=0.0, help="fraction held out, evaluated every epoch")
    add("--test-limit", type=int, help="evaluate on a class-balanced subset of N test images")
    add(
        "--init-from",
        metavar="ARTIFACT",
        help="start from this trained artifact's weights (.keras or .npz, same size; another stem "
        "only if every weight's shape fits, e.g. stock into stride1), "
        "e.g. to train on from the shipped model in a later session",
    )
    add(
        "--checkpoint-minutes",
        type=float,
        default=DEFAULT_CHECKPOINT_MINUTES,
        help="also checkpoint within an epoch this often (default %(default)g)",
    )
    add(
        "--probe-images",
        type=int,
        default=DEFAULT_PROBE_IMAGES,
        help="class-balanced test images scored after every epoch (default %(default)s; 0: none)",
    )
    add(
        "--go-no-go",
        metavar="EPOCH:ACCURACY",
        type=_go_no_go,
        help="stop after EPOCH unless the probe scores at least ACCURACY (e.g. 3:0.6)",
    )
    add(
        "--precision",
        choices=("auto", *POLICIES),
        default="auto",
        help="auto: mixed float16 on a GPU; on a CPU mixed bfloat16 where it has AMX (oneDNN's "
        "bf16 kernels), else float32; bfloat16: mixed bfloat16",
    )
    add(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the training step with XLA (default: on a GPU, and on a CPU without "
        "AVX-512; where oneDNN has AVX-512 or AMX kernels they are the fast ones)",
    )
    add("--fresh", action="store_true", help="discard a checkpoint and start over")


def _go_no_go(text: str) -> GoNoGo:
    try:
        return GoNoGo.parse(text)
    except TrainingError as exc:  # argparse reports this type's message as it is
        raise argparse.ArgumentTypeError(str(exc)) from None


def recipe_from_args(args: argparse.Namespace, data_digest: str, init_digest: str = "") -> Recipe:
    if args.epochs < 1 or args.batch_size < 1:
        raise TrainingError("--epochs and --batch-size must be at least 1")
    if not 0.0 <= args.val_split < 1.0:
        raise TrainingError("--val-split must be in [0, 1)")
    if not 0 <= args.cutout <= args.input_size:
        raise TrainingError(
            f"--cutout {args.cutout}: the square's side must be 0 (none) to the input size "
            f"({args.input_size} px)"
        )
    return Recipe(
        stem=args.stem,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        peak_lr=args.lr if args.lr is not None else 0.1 * args.batch_size / 128,
        warmup_epochs=args.warmup_epochs,
        momentum=0.9,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        limit=args.limit,
        val_split=args.val_split,
        data_sha256=data_digest,
        schedule=args.schedule,
        init_sha256=init_digest,
        cutout=args.cutout,
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except (
        TrainingError, datasets.DatasetError, EvaluationError, model.ModelMetadataError
    ) as exc:  # fmt: skip
        print(f"appliance train: {exc}", file=sys.stderr)
        return 2


def _init_weights(net, source: str, recipe: Recipe) -> dict[str, Any]:
    """Copy a trained artifact's weights into ``net``; what the artifact was, for the metadata.

    Another stem is fine when every weight has the same shape (stock into stride1: the same
    network seeing four times the detail, a progressive-resizing step); anything else is refused.
    """
    loaded = model.load(source)
    meta = loaded.metadata
    if meta.input_size != recipe.input_size:
        raise TrainingError(
            f"--init-from {source}: trained at {meta.input_size}px, but this run trains at "
            f"{recipe.input_size}px"
        )
    theirs = [(w.path, tuple(w.shape)) for w in loaded.model.weights]
    ours = [(w.path, tuple(w.shape)) for w in net.weights]
    if [shape for _, shape in theirs] != [shape for _, shape in ours]:
        differ = next(
            (
                f"{a[0]} {a[1]} vs {b[1]}"
                for a, b in zip(theirs, ours, strict=False)
                if a[1] != b[1]
            ),
            f"{len(theirs)} weights vs {len(ours)}",
        )
        raise TrainingError(
            f"--init-from {source}: its {meta.stem} stem's weights do not fit the {recipe.stem} "
            f"stem's ({differ})"
        )
    net.set_weights(loaded.model.get_weights())
    log.info("starting from the weights of %s (%s, %s stem)", source, meta.model_id, meta.stem)
    return {
        "path": source,
        "model_id": meta.model_id,
        "stem": meta.stem,
        "test_accuracy": meta.test_accuracy,
        "epochs": meta.extra.get("total_epochs", meta.extra.get("epochs")),
    }


def _probe(source: str, recipe: Recipe, images: int, check: GoNoGo | None, train_names: set[str]):
    if images <= 0:
        if check:
            raise TrainingError("--go-no-go needs --probe-images above 0")
        return None
    try:
        test = datasets.load(source, "test")
    except datasets.DatasetError:
        test = []
    if not test or any(s.name in train_names for s in test):
        if check:
            raise TrainingError(f"--go-no-go: {source} has no separate test split to probe")
        return None
    order = balanced_order(label_indices(test, model.CIFAR10_CLASSES), recipe.seed)
    return Probe([test[i] for i in order[:images]], check)


def _train(args: argparse.Namespace) -> int:
    out = model.artifact_paths(args.out)[0]
    folder = checkpoint_dir(out)
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    if args.data == "cifar10":  # download (or find) the archive before hashing it
        datasets.download(
            datasets.CIFAR10_URL,
            datasets.cache_dir() / Path(datasets.CIFAR10_URL).name,
            datasets.CIFAR10_MD5,
        )
    init_digest = ""
    if args.init_from:
        init_file = model.artifact_paths(args.init_from)[0]
        if not init_file.exists():
            raise TrainingError(f"--init-from {args.init_from}: no such artifact")
        init_digest = model.sha256_file(init_file)
    recipe = recipe_from_args(args, data_sha256(args.data), init_digest)
    state = read_state(folder)
    if state is not None and (changed := recipe_differences(state, recipe)):
        raise TrainingError(
            f"{folder} holds a run with other settings ({', '.join(changed)} differ): rerun "
            "with the same options to resume, or pass --fresh to start over"
        )
    if state and state.get("finished") and out.exists():
        log.info("%s is already trained (%d epochs); --fresh trains again", out, state["epoch"])
        return 0

    policy = precision_policy(args.precision)
    xla = use_xla(args.xla, policy)
    log.info(
        "precision: %s%s, XLA %s%s", policy, " (auto)" if args.precision == "auto" else "",
        "on" if xla else "off", " (auto)" if args.xla is None else "",
    )  # fmt: skip
    train_split, val_split, train_names = load_training_data(args.data, recipe)
    n = len(train_split.labels)
    if n < recipe.batch_size:
        raise TrainingError(f"{n} training images, fewer than one batch of {recipe.batch_size}")
    steps = n // recipe.batch_size  # whole batches: BatchNorm dislikes a tiny last one
    probe = _probe(args.data, recipe, args.probe_images, args.go_no_go, train_names)
    net = build_compiled(recipe, steps, policy, xla)
    start, step = 0, 0
    if state and state.get("checkpoint"):
        # Rebuild + compile + load weights rather than load_model: the compiled optimizer keeps
        # settings Keras does not serialise (the weight-decay exclusions).
        net.optimizer.build(net.trainable_variables)
        net.load_weights(folder / state["checkpoint"])
        start, step = int(state["epoch"]), int(state.get("step", 0))
        done, expected = int(net.optimizer.iterations.numpy()), start * steps + step
        # float16 loss scaling skips the update of a step whose gradients overflowed, so there
        # the count may fall short; otherwise it must be exact.
        if done > expected or (done < expected and policy != "mixed_float16"):
            raise TrainingError(
                f"{folder}: checkpoint has {done} optimizer steps, expected {expected}; "
                "pass --fresh to start over"
            )
        within = f" and {step}/{steps} steps of the next" if step else ""
        log.info("resuming from %s after epoch %d/%d%s", folder, start, recipe.epochs, within)
    else:
        init = _init_weights(net, args.init_from, recipe) if args.init_from else None
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "recipe": asdict(recipe), "epoch": 0, "step": 0, "history": [],
            "training_seconds": 0.0, "init_from": init,
        }  # fmt: skip
        write_state(folder, state)
    classes = len(model.CIFAR10_CLASSES)
    validation = validation_dataset(val_split, 256, classes) if val_split else None
    # A run resumed mid-epoch first finishes that epoch (a shorter fit), then goes on by epochs.
    parts = [(start, step, start + 1), (start + 1, 0, recipe.epochs)] if step else []
    parts = parts or [(start, 0, recipe.epochs)]
    with stop_on_signals() as stop:
        log.info(
            "training ResNet50 (%s stem, %dx%d) on %d images of %s: %d epochs x %d steps of %d",
            recipe.stem, recipe.input_size, recipe.input_size, n, args.data, recipe.epochs, steps,
            recipe.batch_size,
        )  # fmt: skip
        checkpoint_s = 60 * args.checkpoint_minutes
        progress = make_progress(recipe, steps, folder, state, checkpoint_s, probe, stop)
        for first, skip, end in parts:
            if first >= end or progress.no_go or progress.stopped_at:
                continue
            net.fit(
                training_dataset(train_split, recipe, steps, first, classes, skip, end),
                epochs=end,
                initial_epoch=first,
                steps_per_epoch=steps - skip,
                validation_data=validation,
                callbacks=[progress],
                shuffle=False,  # the order is the dataset's own (seeded, per epoch)
                verbose=0,
            )
    if progress.stopped_at and not progress.no_go and progress.stopped_at[0] < recipe.epochs:
        epoch, step = progress.stopped_at
        within = f" and {step}/{steps} steps of the next" if step else ""
        print(
            f"appliance train: stopped by {stop.name} after epoch {epoch}/{recipe.epochs}{within}; "
            f"checkpoint in {folder}: the same command resumes there",
            file=sys.stderr,
        )
        return stop.exit_status
    if progress.no_go:
        print(f"appliance train: {progress.no_go}", file=sys.stderr)
        return EXIT_NO_GO
    metadata = export(export_copy(net, recipe), recipe, args, state, out, policy, train_names)
    state["finished"] = True
    write_state(folder, state)
    accuracy = "n/a" if metadata.test_accuracy is None else f"{100 * metadata.test_accuracy:.2f}%"
    print(f"saved {out} ({metadata.model_id}), test accuracy {accuracy}")
    return 0
