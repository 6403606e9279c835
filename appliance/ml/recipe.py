"""What decides a training run's weights, and the one error a run reports to its user."""

from __future__ import annotations

from dataclasses import dataclass


def crop_pad(input_size: int) -> int:
    """The random-crop padding: 4 px at 32x32, scaled with the input size (CPU and GPU runs)."""
    return max(1, round(4 * input_size / 32))


def augmentation_words(input_size: int, cutout: int = 0) -> str:
    """What a training image goes through, in words (artifacts' metadata; CPU and GPU runs)."""
    words = f"random crop from {crop_pad(input_size)}-px zero padding, horizontal flip"
    return words + (f", a {cutout}-px square cut out" if cutout else "")


class TrainingError(ValueError):
    """The run cannot start or continue as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; a checkpoint resumes only the same recipe."""

    stem: str
    input_size: int
    epochs: int
    batch_size: int
    peak_lr: float
    warmup_epochs: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    seed: int
    limit: int | None
    val_split: float
    data_sha256: str
    # After the warmup: "cosine" to zero, or "linear" to zero (the short-run schedule).
    schedule: str = "cosine"
    # sha256 of the artifact whose weights the run starts from (--init-from); "" from scratch.
    init_sha256: str = ""
    # Side in px of a square zeroed at a random place in each training image (Cutout); 0: none.
    cutout: int = 0

    @property
    def pad(self) -> int:
        return crop_pad(self.input_size)

    @property
    def augmentation(self) -> str:
        return augmentation_words(self.input_size, self.cutout)
