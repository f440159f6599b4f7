"""Reading and writing the 2D PNG images and masks of the chest X-ray data sets.

Chest X-rays are grey; some releases store them as RGB(A) or palette PNGs with three equal colour channels.
:func:`to_grayscale` turns those into one channel (as MONAI ``PILReader``'s ``converter``, and in data
preparation) and refuses real colour images instead of mixing their channels silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["to_grayscale", "read_grayscale", "read_size", "read_mask", "write_mask", "MASK_THRESHOLD"]

# One-channel PIL modes that are kept as they are (8-bit, 16-bit, 32-bit integer and float grey).
_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")
# Modes that hold grey content in several channels (or a palette / one bit) and are converted to "L".
_CONVERTIBLE_MODES = ("1", "P", "LA", "RGB", "RGBA")

# Mask pixels above this grey value are foreground (masks are stored as 0/255; resized or JPEG-touched
# releases have intermediate values at the borders).
MASK_THRESHOLD = 127


def _name(image: Image.Image) -> str:
    return str(getattr(image, "filename", "") or "<in-memory image>")


def to_grayscale(image: Image.Image) -> Image.Image:
    """Return ``image`` as a one-channel PIL image.

    Grey modes are returned unchanged. Bilevel, palette, grey+alpha, RGB and RGBA images are converted to
    8-bit grey (``"L"``) when their colour channels are equal, which is how grey X-rays saved as colour look.

    Args:
        image: an opened PIL image.

    Returns:
        A PIL image with one channel.

    Raises:
        ValueError: for a colour image (unequal R, G, B) or an unsupported mode; the message names the file.
    """
    if image.mode in _GREY_MODES:
        return image
    if image.mode not in _CONVERTIBLE_MODES:
        raise ValueError(f"{_name(image)}: unsupported PNG mode {image.mode!r}; expected a grey image.")
    if image.mode in ("P", "RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            raise ValueError(f"{_name(image)}: colour image (R, G and B differ); expected a grey X-ray or mask.")
    converted = image.convert("L")
    converted.filename = _name(image)  # keeps error messages of later steps pointing at the file
    return converted


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for truncated or non-image files
        raise ValueError(f"{path}: cannot read the image ({error}).") from error
    return image


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read a PNG as a 2D (height, width) array with :func:`to_grayscale`'s rules.

    Raises:
        ValueError: naming ``path`` when it is not a readable grey image.
    """
    return np.asarray(to_grayscale(_open(Path(path))))


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, after checking that the whole file decodes.

    Raises:
        ValueError: naming ``path`` when it is unreadable, truncated or not a grey image.
    """
    return read_grayscale(path).shape


def read_mask(path: str | Path) -> np.ndarray:
    """Read a lung mask PNG as a boolean (height, width) array: pixels above :data:`MASK_THRESHOLD`.

    Raises:
        ValueError: naming ``path`` when it is unreadable.
    """
    return read_grayscale(path) > MASK_THRESHOLD


def write_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a boolean (height, width) mask as an 8-bit 0/255 PNG."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
