"""The learning-rate schedule of a time-budgeted run, and how many steps fit the time left.

Pure Python: the GPU run (:mod:`appliance.ml.gpu_train`) plans with it, the unit tests check it.
"""

from __future__ import annotations

SHORT_RUN_EPOCHS = 3  # from this many epochs on, a plan ends on a whole epoch


class Schedule:
    """Linear warm-up from peak/25 (as ``appliance train``) to the peak, then linear to zero at
    the ``total``-th step.

    :meth:`replan` moves the end as the measured speed says; past the warm-up the decay
    re-anchors at the current rate, so the rate never jumps (a cosine would, or would need its
    own bookkeeping).
    """

    def __init__(self, peak: float, warmup: int, total: int) -> None:
        self.peak, self.warmup, self.total = peak, warmup, total
        self.anchor, self.anchor_lr = warmup, peak

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak / 25 + (self.peak - self.peak / 25) * step / self.warmup
        if step >= self.total:
            return 0.0
        return self.anchor_lr * (self.total - step) / max(self.total - self.anchor, 1)

    def replan(self, step: int, total: int) -> None:
        total = max(total, step + 1)
        if step < self.warmup:  # a short run keeps a fifth of its steps for the warm-up at most
            self.warmup = self.anchor = min(self.warmup, total // 5)
        else:
            self.anchor_lr, self.anchor = self(step), step
        self.total = total


def planned_steps(
    step: int,
    images_per_second: float,
    seconds_left: float,
    batch_size: int,
    per_epoch: int,
    max_epochs: int | None = None,
) -> int:
    """The last step that ``seconds_left`` allows at the measured speed (at least ``step + 1``)."""
    total = step + max(0, int(seconds_left * images_per_second / batch_size))
    if total >= SHORT_RUN_EPOCHS * per_epoch:
        total = total // per_epoch * per_epoch
    if max_epochs:
        total = min(total, max_epochs * per_epoch)
    return max(total, step + 1)


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(max(seconds, 0)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
