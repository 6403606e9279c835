"""The ResNet50 compiled for training: its optimizer, learning-rate schedule and precision."""

from __future__ import annotations

from pathlib import Path

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
        # XLA or oneDNN's kernels: which is faster depends on the CPU (use_xla, measured there).
        jit_compile=xla,
    )


# --precision -> the Keras dtype policy ("auto" is decided by has_gpu()).
POLICIES = {"mixed": "mixed_float16", "bfloat16": "mixed_bfloat16", "float32": "float32"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from Linux's /proc/cpuinfo (its first "flags" line); empty where
    that file is absent."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def has_amx_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX with bfloat16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def has_avx512(cpuinfo: str | None = None) -> bool:
    """Whether oneDNN has its AVX-512 kernels here (its avx512_core: F, BW, VL and DQ)."""
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_flags(cpuinfo)


def precision_policy(precision: str) -> str:
    """--precision -> a Keras dtype policy. auto: mixed float16 on a GPU; on a CPU mixed bfloat16
    where oneDNN has AMX for it (measured 1.9x float32+XLA here), float32 elsewhere (bfloat16
    without AMX fell back to Eigen and ran 3-7x slower)."""
    if precision != "auto":
        return POLICIES[precision]
    if has_gpu():
        return "mixed_float16"
    return "mixed_bfloat16" if has_amx_bf16() else "float32"


def use_xla(xla: bool | None, policy: str) -> bool:
    """--xla/--no-xla, or (None) auto: XLA on a GPU; on a CPU only where oneDNN lacks AVX-512.
    Measured, training step of the stride1 stem at batch 128 on 2 cores: with AVX-512 (no AMX)
    oneDNN's float32 ran 63.9 img/s and XLA's 18.0, as XLA compiles its own convolutions (f32
    x98) in place of oneDNN's; with AMX, bfloat16 without XLA ran 1.9x float32 with it. On an
    AVX2 machine (AMD EPYC) XLA ran the stock stem's step 2.8x faster, as fast on the CIFAR stem."""
    if xla is not None:
        return xla
    if has_gpu():
        return True
    return not (policy == "mixed_bfloat16" or has_avx512())


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
