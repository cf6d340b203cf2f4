"""Image loading with checks that name the offending file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Larger images are refused rather than decoded (a 50,000 x 50,000 PNG would need 7.5 GB as RGB).
DEFAULT_MAX_PIXELS = 40_000_000


class DataError(ValueError):
    """Bad input data; the message names the file, row or column."""


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, or raise :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w == 0 or h == 0:
                raise DataError(f"{path}: image has zero size ({w}x{h})")
            if w * h > max_pixels:
                raise DataError(f"{path}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
            img.load()
            return img.convert("RGB")
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
