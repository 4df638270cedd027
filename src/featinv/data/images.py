"""Decoding and normalising images: every accepted image becomes 8-bit RGB.

Grayscale, palette, CMYK, RGBA and 16-bit images are converted; corrupt or truncated files raise
:class:`BadImage` with a reason, which the shard writer records instead of aborting.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# A decompression bomb is a bad input, not a reason to hang: PIL raises above this many pixels.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class BadImage(ValueError):
    """An image that cannot be decoded; the message is the reason recorded in rejected.tsv."""


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.clip(arr, 0.0, 1.0) * 255.0 if arr.max(initial=0) <= 1.0 else np.clip(arr, 0, 255)
    elif arr.max(initial=0) > 255:
        # 16-bit content (I;16 or 32-bit I holding 16-bit values): keep the top byte.
        arr = arr.astype(np.uint32) >> 8
    arr = arr.astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _sixteen_bit_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _open(data: bytes) -> Image.Image:
    """Open and fully load (so truncation is caught here) encoded image bytes, in their own mode."""
    if not data:
        raise BadImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"cannot decode: {exc}") from None
    if img.width < 1 or img.height < 1:
        raise BadImage(f"empty image of size {img.size}")
    return img


def _rgb(img: Image.Image) -> Image.Image:
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise BadImage(f"cannot convert mode {img.mode} to RGB: {exc}") from None


def decode(data: bytes) -> Image.Image:
    """Decode encoded image bytes into 8-bit RGB; :class:`BadImage` says why when it cannot."""
    return _rgb(_open(data))


def normalise(data: bytes) -> tuple[bytes, str, Image.Image]:
    """Return (bytes, extension, RGB image) to store for one source image.

    An RGB JPEG is stored as is (no recompression); everything else is re-encoded as PNG after
    conversion to RGB, so stored images are always lossless copies of what was decoded.
    """
    img = _open(data)
    if img.format == "JPEG" and img.mode == "RGB":
        return data, "jpg", img
    rgb = _rgb(img)
    return encode_png(rgb), "png", rgb


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
