"""Image loading with checks that name the offending file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Larger images are refused rather than decoded (a 50,000 x 50,000 PNG would need 7.5 GB as RGB).
DEFAULT_MAX_PIXELS = 40_000_000


class DataError(ValueError):
    """Bad input data; the message names the file, row or column."""


class RowError(DataError):
    """A defect confined to one row (missing or unreadable image, missing or empty column, undecodable line).

    A dataset build skips such a row and counts it under ``reason`` in the manifest's data-quality record;
    a direct caller of a loader (or a training/evaluation job reading a built dataset) still stops."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ImageError(RowError):
    """An image that is missing, unreadable, empty or too large to decode."""


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, or raise :class:`ImageError` naming the file.

    The size is checked from the header before any pixel is decoded, so a decompression bomb (a small file
    claiming 50,000 x 50,000 pixels) is refused without allocating its pixels."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found", "missing_image")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w == 0 or h == 0:
                raise ImageError(f"{path}: image has zero size ({w}x{h})", "empty_image")
            if w * h > max_pixels:
                raise ImageError(
                    f"{path}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}",
                    "image_too_large",
                )
            img.load()
            return img.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large to decode ({exc})", "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{path}: cannot read image ({type(exc).__name__}: {exc})", "unreadable_image"
        ) from None
