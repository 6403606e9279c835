"""Image bytes to model input: the one preprocessing path shared by training and serving.

Normalisation (scale and CIFAR-10 mean/std) lives inside the model, so everything outside it only
has to turn PNG/JPEG bytes into an RGB uint8 array of the model's input size.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}
PREPROCESSING = "rgb-uint8, bilinear resize to input_size; scale and CIFAR-10 mean/std in-model"


class ImageError(ValueError):
    """The bytes are not an image this pipeline accepts; the message says why."""


def sniff_content_type(data: bytes) -> str:
    """Return the MIME type from the file signature, without decoding."""
    if data.startswith(PNG_MAGIC):
        return "image/png"
    if data.startswith(JPEG_MAGIC):
        return "image/jpeg"
    raise ImageError("not an image: expected PNG or JPEG bytes")


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes to an HxWx3 uint8 array, refusing oversized images before decoding."""
    sniff_content_type(data)
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning would fire on our limit's neighbourhood; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image too large: {width}x{height} = {width * height} pixels, "
                    f"limit is {max_pixels}"
                )
            image.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a decodable image: {exc}") from None
    if image.format not in CONTENT_TYPES:
        raise ImageError(f"not an accepted image format: {image.format}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def to_input_size(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 array to size x size (bilinear); a no-op at the right size."""
    if rgb.shape[:2] == (size, size):
        return rgb
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def image_to_input(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes to the model's size x size x 3 uint8 input."""
    return to_input_size(decode_rgb(data, max_pixels), size)
