"""Every accepted image becomes 8-bit RGB; corrupt and truncated files are BadImage with a reason."""

import numpy as np
import pytest
from PIL import Image

from conftest import encode, photo_array
from featinv.data.images import BadImage, decode, normalise


def test_rgb_jpeg_is_kept_byte_for_byte():
    data = encode(Image.fromarray(photo_array()), "JPEG", quality=90)
    stored, ext, img = normalise(data)
    assert ext == "jpg" and stored == data and img.mode == "RGB"


def test_grayscale_becomes_rgb_with_equal_channels():
    gray = Image.fromarray(photo_array()[..., 0])
    img = decode(encode(gray, "PNG"))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (48, 48, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == np.asarray(gray)).all()


def test_cmyk_jpeg_becomes_rgb_png():
    cmyk = Image.fromarray(photo_array()).convert("CMYK")
    stored, ext, img = normalise(encode(cmyk, "JPEG", quality=95))
    assert img.mode == "RGB" and ext == "png"
    # Converted colours stay close to the original RGB (JPEG + CMYK round trip).
    assert np.abs(np.asarray(img, float) - photo_array()).mean() < 12


def test_rgba_is_composited_over_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    img = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    arr = np.asarray(img)
    assert img.mode == "RGB"
    assert (arr[:4] == [255, 0, 0]).all() and (arr[4:] == [255, 255, 255]).all()


def test_palette_image_becomes_rgb():
    pal = Image.fromarray(photo_array()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img = decode(encode(pal, "PNG"))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))


def test_sixteen_bit_keeps_the_high_byte():
    arr16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    img = decode(encode(Image.fromarray(arr16), "PNG"))
    out = np.asarray(img)
    assert img.mode == "RGB"
    assert np.array_equal(out[..., 0], (arr16 >> 8).astype(np.uint8))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a recognised image format"),
    ],
)
def test_garbage_is_rejected_with_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode(data)


def test_truncated_jpeg_is_rejected():
    data = encode(Image.fromarray(photo_array(size=64)), "JPEG", quality=95)
    with pytest.raises(BadImage, match="cannot decode"):
        decode(data[: len(data) // 2])


def test_corrupt_jpeg_is_rejected():
    data = bytearray(encode(Image.fromarray(photo_array(size=64)), "JPEG", quality=95))
    scan = data.find(b"\xff\xda")  # start of scan: header intact, entropy-coded data destroyed
    data[scan:] = b"\xff" * (len(data) - scan)
    with pytest.raises(BadImage, match="cannot decode"):
        decode(bytes(data))


def test_jpeg_with_zero_sized_frame_is_rejected():
    data = bytearray(encode(Image.fromarray(photo_array(size=64)), "JPEG", quality=95))
    sof = data.find(b"\xff\xc0")
    data[sof : sof + 19] = b"\xff\xc0\x00\x11\x08" + b"\x00" * 14
    with pytest.raises(BadImage):
        decode(bytes(data))
