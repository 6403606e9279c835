"""The ResNet50 compiled for training: its optimizer, learning-rate schedule and precision."""

from __future__ import annotations

from appliance import model
from appliance.ml.recipe import Recipe


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def lr_schedule(recipe: Recipe, steps_per_epoch: int):
    """Linear warmup from peak/25 to the peak, then cosine (or linear) decay to zero at the last
    step."""
    import keras

    total = recipe.epochs * steps_per_epoch
    warmup = min(round(recipe.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    if recipe.schedule == "linear":
        from appliance.ml.keras_schedules import WarmupLinear

        return WarmupLinear(recipe.peak_lr, warmup, total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.peak_lr / 25,
        decay_steps=max(total - warmup, 1),
        alpha=0.0,
        warmup_target=recipe.peak_lr,
        warmup_steps=warmup,
    )


def compile_model(net, recipe: Recipe, steps_per_epoch: int, xla: bool = True) -> None:
    """SGD + Nesterov + weight decay + label smoothing, as the ResNet-on-CIFAR recipes do."""
    import keras

    optimizer = keras.optimizers.SGD(
        learning_rate=lr_schedule(recipe, steps_per_epoch),
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    # Decaying BatchNorm scales/offsets and biases only fights the normalisation; the usual
    # recipes leave them out. (Not serialised by Keras: resume therefore recompiles, see run().)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    net.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        # XLA on a CPU too: TensorFlow's own CPU kernel for Conv2DBackpropInput is very slow on
        # the 1x1 and 2x2 feature maps of the stock stem at 32x32 (conv5 took 90% of a step); XLA's
        # step ran 2.8x faster there (43 against 15 img/s on 2 cores) and as fast on the CIFAR stem.
        jit_compile=xla,
    )


# --precision -> the Keras dtype policy ("auto" is decided by has_gpu()).
POLICIES = {"mixed": "mixed_float16", "bfloat16": "mixed_bfloat16", "float32": "float32"}


def precision_policy(precision: str) -> str:
    if precision == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return POLICIES[precision]


def build_compiled(recipe: Recipe, steps_per_epoch: int, policy: str, xla: bool = True):
    import keras

    keras.mixed_precision.set_global_policy(policy)
    net = model.build(recipe.input_size, model.CIFAR10_CLASSES, recipe.stem, recipe.seed)
    compile_model(net, recipe, steps_per_epoch, xla)
    return net


def export_copy(net, recipe: Recipe):
    """The same weights in a fresh float32, uncompiled model: what gets saved, so the artifact
    serves on CPUs and carries no optimizer state (half the size of a checkpoint)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    plain = model.build(recipe.input_size, model.CIFAR10_CLASSES, recipe.stem, recipe.seed)
    plain.set_weights(net.get_weights())
    return plain
