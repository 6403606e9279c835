"""Keras learning-rate schedules that Keras lacks (imports Keras: load it only to train)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="appliance")
class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from ``peak / 25`` to ``peak`` over ``warmup`` steps, then linear to 0 at ``total``.

    The short-run schedule: unlike a cosine it spends no steps near the peak or near zero.
    (:class:`appliance.ml.schedule.Schedule` is the same curve, re-planned as a GPU run goes.)
    """

    def __init__(self, peak: float, warmup: int, total: int) -> None:
        self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        start = self.peak / 25
        rising = start + (self.peak - start) * step / max(self.warmup, 1)
        falling = self.peak * (self.total - step) / max(self.total - self.warmup, 1)
        rate = keras.ops.where(step < self.warmup, rising, falling)
        return keras.ops.maximum(rate, 0.0)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total}
