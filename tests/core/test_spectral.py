"""Shells, radial averages and Fourier crop/pad against NumPy and analytic oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryovox.core.fft import fftn_c, rfftn_c
from cryovox.core.spectral import (downsample_images, fourier_crop, fourier_pad, hermitian_weights,
                                   radial_average, resample, shell_index, shell_resolution, shell_sum)


def np_shells(size, ndim):
    k = np.arange(size) - size // 2
    grids = np.meshgrid(*([k] * ndim), indexing="ij")
    return np.round(np.sqrt(sum(g.astype(float) ** 2 for g in grids))).astype(int)


@pytest.mark.parametrize("size", [16, 17])
@pytest.mark.parametrize("ndim", [2, 3])
def test_shell_index_full_and_half(size, ndim):
    want = np_shells(size, ndim)
    np.testing.assert_array_equal(shell_index(size, ndim).numpy(), want)
    # half layout = columns kx >= 0 of the full one
    # half layout = full columns kx = 0 … (the even box's Nyquist kx = D/2 has kx = -D/2's radii)
    half = want[..., size // 2:] if size % 2 else np.concatenate([want[..., size // 2:], want[..., :1]], -1)
    np.testing.assert_array_equal(shell_index(size, ndim, half=True).numpy(), half)


@pytest.mark.parametrize("size", [20, 21])
def test_radial_average_matches_numpy_loop_and_half_equals_full(size):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, size, size, size, dtype=torch.float64, generator=g)
    power = fftn_c(x).abs() ** 2
    shells = np_shells(size, 3)
    want = np.array([[power[b].numpy()[shells == i].mean() for i in range(size // 2 + 1)] for b in range(2)])
    got = radial_average(power, ndim=3)
    assert got.shape == (2, size // 2 + 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    half = radial_average(rfftn_c(x).abs() ** 2, ndim=3, half=True)
    np.testing.assert_allclose(half.numpy(), want, rtol=1e-10)
    # 2D too
    img = x[0, 0]
    p2 = fftn_c(img, 2).abs() ** 2
    s2 = np_shells(size, 2)
    want2 = [p2.numpy()[s2 == i].mean() for i in range(size // 2 + 1)]
    np.testing.assert_allclose(radial_average(rfftn_c(img, 2).abs() ** 2, ndim=2, half=True).numpy(), want2, rtol=1e-10)


def test_hermitian_weights_and_shell_sum_count():
    assert hermitian_weights(8).tolist() == [1, 2, 2, 2, 1]
    assert hermitian_weights(9).tolist() == [1, 2, 2, 2, 2]
    ones = torch.ones(8, 8, 5)
    counts = shell_sum(ones, ndim=3, half=True)
    want = np.bincount(np_shells(8, 3).ravel())[:5]
    np.testing.assert_array_equal(counts.numpy(), want)


def test_shell_resolution():
    r = shell_resolution(100, 1.5)
    assert r[0].item() == float("inf") and r[1].item() == pytest.approx(150.0) and r[50].item() == pytest.approx(3.0)


def cosines(size, ndim, freqs, origin=None):
    """Σ a·cos(2π k·(r − c)/D + φ) sampled on a D-grid with origin c = D // 2 (array axes (.., y, x))."""
    c = size // 2 if origin is None else origin
    coords = np.meshgrid(*([np.arange(size) - c] * ndim), indexing="ij")[::-1]   # x, y, (z)
    out = np.zeros((size,) * ndim)
    for a, k, phi in freqs:
        out += a * np.cos(2 * np.pi * sum(ki * ci for ki, ci in zip(k, coords)) / size + phi)
    return out


@pytest.mark.parametrize("big,small", [(32, 16), (33, 17), (32, 19), (31, 24)])
def test_crop_and_pad_of_band_limited_signal_are_exact(big, small):
    # all |k| < small / 2 so the signal is band-limited for both boxes
    freqs2 = [(1.0, (0, 0), 0.0), (0.7, (3, -2), 0.4), (0.5, (-5, 6), 1.3), (0.3, (7, 1), -0.6)]
    hi = torch.from_numpy(cosines(big, 2, freqs2))
    lo = torch.from_numpy(cosines(small, 2, freqs2))
    np.testing.assert_allclose(fourier_crop(hi, small, 2).numpy(), lo.numpy(), atol=1e-10)
    np.testing.assert_allclose(fourier_pad(lo, big, 2).numpy(), hi.numpy(), atol=1e-10)
    freqs3 = [(1.0, (1, 2, -3), 0.2), (0.4, (-4, 0, 5), 1.0)]
    np.testing.assert_allclose(fourier_crop(torch.from_numpy(cosines(big, 3, freqs3)), small, 3).numpy(),
                               cosines(small, 3, freqs3), atol=1e-10)


def test_crop_removes_frequencies_beyond_new_nyquist():
    hi = torch.from_numpy(cosines(32, 2, [(1.0, (2, 1), 0.0), (0.8, (12, 0), 0.3)]))   # 12 > 16/2
    want = cosines(16, 2, [(1.0, (2, 1), 0.0)])
    np.testing.assert_allclose(fourier_crop(hi, 16, 2).numpy(), want, atol=1e-10)
    # a cosine at exactly the new Nyquist (k = 8 of 16) is kept: it samples as (-1)^(x - 8)
    nyq = torch.from_numpy(cosines(32, 2, [(0.6, (8, 0), 0.0), (0.3, (0, 8), 0.0)]))
    np.testing.assert_allclose(fourier_crop(nyq, 16, 2).numpy(), cosines(16, 2, [(0.6, (8, 0), 0.0), (0.3, (0, 8), 0.0)]),
                               atol=1e-10)


def test_pad_crop_round_trip_and_constant_and_centre():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 20, 20, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(fourier_crop(fourier_pad(x, 37, 2), 20, 2).numpy(), x.numpy(), atol=1e-10)
    const = torch.full((24, 24, 24), 2.5, dtype=torch.float32)
    y = fourier_crop(const, 13, 3)
    assert y.dtype == torch.float32 and y.shape == (13, 13, 13)
    np.testing.assert_allclose(y.numpy(), 2.5, atol=1e-5)
    # a centred Gaussian blob stays centred at d // 2 (odd → even, even → odd)
    for big, small in [(33, 16), (32, 21)]:
        r2 = sum(a.astype(float) ** 2 for a in np.meshgrid(*([np.arange(big) - big // 2] * 2)))
        blob = torch.from_numpy(np.exp(-r2 / (2 * 2.0 ** 2)))
        z = fourier_crop(blob, small, 2)
        assert np.unravel_index(int(z.argmax()), z.shape) == (small // 2, small // 2)
        # symmetric about the centre: z[c + i] == z[c - i]
        c = small // 2
        m = min(c, small - 1 - c)
        np.testing.assert_allclose(z[c - m:c + m + 1, c].numpy(), z[c - m:c + m + 1, c].numpy()[::-1], atol=1e-10)


def test_resample_reports_actual_pixel_size():
    x = torch.zeros(50, 50)
    y, apix = resample(x, 1.0, 1.3, 2)
    assert y.shape == (38, 38) and apix == pytest.approx(50 / 38)
    y, apix = resample(x, 2.0, 1.0, 2)
    assert y.shape == (100, 100) and apix == pytest.approx(1.0)


def test_downsample_images_independent_of_the_stack():
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(5, 40, 40, generator=g)
    out = downsample_images(stack, 24)
    alone = downsample_images(stack[2:3], 24)
    torch.testing.assert_close(out[2:3], alone, atol=1e-6, rtol=0)
    other = stack.clone()
    other[[0, 1, 3, 4]] = torch.randn(4, 40, 40, generator=g) * 100
    torch.testing.assert_close(downsample_images(other, 24)[2], out[2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        downsample_images(stack, 41)
