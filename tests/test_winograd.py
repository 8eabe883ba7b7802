"""Winograd's F(3x3, 3x3) in numpy (cnnlab.winograd) against the direct convolution."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab import winograd
from cnnlab.numpy_model import _conv


def test_the_matrices_compute_the_one_dimensional_correlation():
    a_t, g, b_t = winograd.matrices(3, 3, winograd.POINTS)
    assert (a_t.shape, g.shape, b_t.shape) == ((3, 5), (5, 3), (5, 5))
    rng = np.random.default_rng(0)
    for _ in range(5):
        kernel, signal = rng.standard_normal(3), rng.standard_normal(5)
        want = [sum(kernel[k] * signal[i + k] for k in range(3)) for i in range(3)]
        np.testing.assert_allclose(a_t @ ((g @ kernel) * (b_t @ signal)), want, rtol=1e-12, atol=1e-12)


def test_other_sizes_and_points_and_points_that_cannot_serve():
    a_t, g, b_t = winograd.matrices(2, 3, (0, 1, -1, 2))
    kernel, signal = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0, 7.0])
    np.testing.assert_allclose(a_t @ ((g @ kernel) * (b_t @ signal)), [4 + 10 + 18, 5 + 12 + 21])
    with pytest.raises(ValueError, match="needs 4 distinct points"):
        winograd.matrices(2, 3, (0, 1, 1, -1))


@pytest.mark.parametrize("shape", [(3, 5, 5, 64), (2, 9, 11, 16), (4, 3, 3, 20), (2, 28, 28, 17)])
def test_conv3x3_equals_the_direct_convolution(shape):
    rng = np.random.default_rng(1)
    h = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    weight = (rng.standard_normal((7, shape[3], 3, 3)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    got = winograd.conv3x3(h, winograd.filters(weight), bias)
    want = _conv(h.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64), 3, 1, False)
    assert got.shape == (shape[0], shape[1] - 2, shape[2] - 2, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_images_do_not_mix_across_the_blocks():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((700, 5, 5, 64)).astype(np.float32)  # more than one block of images
    transformed = winograd.filters(rng.standard_normal((8, 64, 3, 3)).astype(np.float32))
    together = winograd.conv3x3(h, transformed, None)
    changed = h.copy()
    changed[1::2] = rng.standard_normal(changed[1::2].shape)
    again = winograd.conv3x3(changed, transformed, None)
    assert np.array_equal(again[0::2], together[0::2]) and not np.array_equal(again[1::2], together[1::2])


def test_what_it_serves():
    assert winograd.fits(3, 1, 64) and winograd.fits(3, 1, 128)
    assert not winograd.fits(3, 1, 63) and not winograd.fits(3, 2, 64) and not winograd.fits(5, 1, 64)
