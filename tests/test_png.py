"""cnnlab.png: the PNG writer of every figure, read back by an independent decoder (Pillow)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnlab import png


def _read(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 4), (5, 1, 3), (37, 23, 3), (64, 48, 4)])
def test_pixels_read_back_as_written(shape):
    """Random bytes (every difference wraps around somewhere) and flat areas alike come back bit for bit."""
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    pixels[shape[0] // 2:, : shape[1] // 2] = (200, 30, 7, 255)[: shape[2]]
    image = _read(png.encode(pixels))
    assert image.mode == ("RGB" if shape[2] == 3 else "RGBA") and image.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(image), pixels)


def test_rows_are_stored_as_differences_from_the_row_above():
    """The IDAT holds, per row, the filter byte 2 ("Up") and the row minus the row above, modulo 256."""
    pixels = np.array([[[10, 20, 30], [250, 0, 5]], [[5, 20, 40], [0, 1, 2]]], np.uint8)
    data = png.encode(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at = data.index(b"IDAT")
    size = struct.unpack(">I", data[at - 4:at])[0]
    rows = zlib.decompress(data[at + 4:at + 4 + size])
    assert list(rows) == [2, 10, 20, 30, 250, 0, 5,
                          2, 251, 0, 10, 6, 1, 253]  # 5 - 10 = -5 = 251, 0 - 250 = 6, 2 - 5 = 253


def test_the_resolution_is_recorded_as_pillow_records_it():
    pixels = np.zeros((4, 4, 3), np.uint8)
    ours = _read(png.encode(pixels, 100)).info["dpi"]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="png", dpi=(100, 100))
    assert ours == _read(buf.getvalue()).info["dpi"] and ours[0] == pytest.approx(100, abs=1e-3)
    assert "dpi" not in _read(png.encode(pixels)).info


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((4, 4, 3), np.float32)])
def test_other_arrays_are_refused_with_what_would_do(bad):
    with pytest.raises(ValueError, match=r"uint8 \(height, width, 3 or 4\)"):
        png.encode(bad)
