"""What a training run shows and decides as it goes: a bar with the run's time left, a log line
per epoch, checkpoints within and after epochs, the test-split probe's go/no-go, and a clean stop
(with a checkpoint of the last step) when a signal asks for one."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from appliance import datasets, model
from appliance.ml.checkpoints import save_checkpoint
from appliance.ml.evaluate import evaluate
from appliance.ml.history_plot import PLOT_NAME, plot_history
from appliance.ml.recipe import Recipe, TrainingError
from appliance.ml.stopping import StopRequest

log = logging.getLogger("appliance.ml.train")  # one logger for the run's lines


@dataclass(frozen=True)
class GoNoGo:
    """Stop after ``epoch`` unless the probe scores at least ``accuracy``."""

    epoch: int
    accuracy: float

    @classmethod
    def parse(cls, text: str) -> GoNoGo:
        try:
            epoch, accuracy = text.split(":")
            check = cls(int(epoch), float(accuracy))
        except ValueError:
            raise TrainingError(
                f"--go-no-go {text!r}: expected EPOCH:ACCURACY, e.g. 3:0.6"
            ) from None
        if check.epoch < 1 or not 0.0 < check.accuracy <= 1.0:
            raise TrainingError(
                f"--go-no-go {text!r}: the epoch must be at least 1, the accuracy in (0, 1]"
            )
        return check


@dataclass
class Probe:
    """A class-balanced subset of the test split, scored after every epoch."""

    samples: list[datasets.Sample]
    check: GoNoGo | None

    def score(self, net, input_size: int) -> float:
        return evaluate(net, self.samples, model.CIFAR10_CLASSES, input_size).top1


def make_progress(
    recipe: Recipe,
    steps: int,
    folder: Path,
    state: dict[str, Any],
    checkpoint_s: float,
    probe: Probe | None,
    stop: StopRequest | None = None,
):
    import keras

    class Progress(keras.callbacks.Callback):
        """A per-step bar with the run's time left, one log line per epoch, a checkpoint every
        ``checkpoint_s`` and after every epoch, the probe's go/no-go, and the stop on request."""

        def __init__(self) -> None:
            super().__init__()
            self.bar: tqdm | None = None
            self.no_go: str | None = None
            self.stopped_at: tuple[int, int] | None = None  # (epochs done, steps into the next)
            self.steps_run, self.run_started = 0, time.monotonic()

        def on_epoch_begin(self, epoch: int, logs=None) -> None:
            # A run resumed mid-epoch starts its first epoch at the checkpoint's step.
            self.offset = int(state.get("step", 0)) if epoch == state["epoch"] else 0
            self.base_seconds = float(state["training_seconds"])
            self.started = self.train_done = self.saved = time.monotonic()
            self.bar = tqdm(
                total=steps,
                initial=self.offset,
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                unit="step",
                leave=False,
                mininterval=1.0 if sys.stderr.isatty() else 30.0,
            )

        def seconds_left(self, epoch: int, done: int) -> float:
            per_step = (time.monotonic() - self.run_started) / max(self.steps_run, 1)
            return ((recipe.epochs - epoch - 1) * steps + steps - done) * per_step

        def on_train_batch_end(self, batch: int, logs=None) -> None:
            self.train_done = time.monotonic()
            self.steps_run += 1
            epoch, done = int(state["epoch"]), self.offset + batch + 1
            if self.bar is not None:
                self.bar.update(1)
                logs = logs or {}
                self.bar.set_postfix(
                    loss=f"{logs.get('loss', 0):.3f}",
                    acc=f"{logs.get('accuracy', 0):.3f}",
                    run_left=duration(self.seconds_left(epoch, done)),
                    refresh=False,  # the bar redraws at its own pace (every 30 s in a log file)
                )
            stopping = stop is not None and stop.requested
            if stopping:
                self.model.stop_training = True
                self.stopped_at = (epoch, done) if done < steps else (epoch + 1, 0)
            # At an epoch's last step the epoch's own checkpoint follows (on_epoch_end).
            if done < steps and (stopping or self.train_done - self.saved >= checkpoint_s):
                state["step"] = done
                state["training_seconds"] = self.base_seconds + self.train_done - self.started
                save_checkpoint(self.model, folder, state)
                self.saved = time.monotonic()
                log.info("checkpoint at epoch %d, step %d/%d", epoch + 1, done, steps)

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            if self.stopped_at is not None and self.stopped_at[1]:
                # Stopped within the epoch: Keras ends it early, but it is not done.
                if self.bar is not None:
                    self.bar.close()
                return
            self._epoch_done(epoch, logs)

        def _epoch_done(self, epoch: int, logs) -> None:
            if self.bar is not None:
                self.bar.close()
            logs = {k: float(v) for k, v in (logs or {}).items()}
            seconds = time.monotonic() - self.started
            ran = steps - self.offset
            rate = ran * recipe.batch_size / max(self.train_done - self.started, 1e-9)
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            record = {"epoch": epoch + 1, **logs, "lr": lr, "seconds": seconds, "img_per_s": rate}
            if self.offset:  # Keras's metrics cover the steps this process ran
                record["steps_measured"] = ran
            extra = ""
            if "val_accuracy" in logs:
                extra = f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.4f}"
            if probe is not None:
                record["probe_accuracy"] = probe.score(self.model, recipe.input_size)
                extra += f"  probe {100 * record['probe_accuracy']:.1f}%"
            log.info(
                "epoch %d/%d  loss %.4f  acc %.4f%s  lr %.4g  %.1f img/s  %s  ~%s left",
                epoch + 1,
                recipe.epochs,
                logs.get("loss", math.nan),
                logs.get("accuracy", math.nan),
                extra,
                lr,
                rate,
                duration(seconds),
                duration(self.seconds_left(epoch, steps)),
            )
            state["epoch"], state["step"] = epoch + 1, 0
            state["history"].append(record)
            state["training_seconds"] = self.base_seconds + seconds
            save_checkpoint(self.model, folder, state)
            plot_history(state["history"], folder / PLOT_NAME, f"{folder} ({recipe.stem} stem)")
            check = probe.check if probe else None
            if check and epoch + 1 == check.epoch and record["probe_accuracy"] < check.accuracy:
                self.no_go = (
                    f"go/no-go after epoch {check.epoch}: the probe scored "
                    f"{100 * record['probe_accuracy']:.1f}% of {len(probe.samples)} test images, "
                    f"under {100 * check.accuracy:.1f}%: this run is not on track and stops here "
                    f"(its checkpoint is kept: rerun without --go-no-go to go on anyway)"
                )
                self.model.stop_training = True

    return Progress()


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
