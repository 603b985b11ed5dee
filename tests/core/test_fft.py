"""Centred FFT conventions against NumPy, and sub-pixel shifts against analytic translations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryovox.core.fft import (fft2_c, fftn_c, freq_grid, ifftn_c, irfftn_c, phase_ramp_2d, radius_grid, rfftn_c,
                              shift_images)


@pytest.mark.parametrize("D", [8, 9])
@pytest.mark.parametrize("ndim", [2, 3])
def test_centred_fft_matches_numpy_and_half_layout(D, ndim):
    x = np.random.default_rng(D).standard_normal((2,) + (D,) * ndim)
    axes = tuple(range(-ndim, 0))
    want = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes), axes=axes)
    F = fftn_c(torch.from_numpy(x), ndim)
    np.testing.assert_allclose(F.numpy(), want, atol=1e-10)
    centre = (slice(None),) + (D // 2,) * ndim
    np.testing.assert_allclose(F[centre].real.numpy(), x.reshape(2, -1).sum(1), atol=1e-10)   # DC = sum
    H = rfftn_c(torch.from_numpy(x), ndim)
    assert H.shape[-1] == D // 2 + 1
    n_pos = (D + 1) // 2
    np.testing.assert_allclose(H[..., :n_pos].numpy(), want[..., D // 2:D // 2 + n_pos], atol=1e-10)
    if D % 2 == 0:                                     # Nyquist column = full layout's x = -D/2 column
        np.testing.assert_allclose(H[..., -1].numpy(), want[..., 0], atol=1e-10)
    np.testing.assert_allclose(irfftn_c(H, D, ndim).numpy(), x, atol=1e-12)
    np.testing.assert_allclose(ifftn_c(F, ndim).real.numpy(), x, atol=1e-12)


def test_freq_grid_order_and_radius():
    f = freq_grid(5, 3)
    assert f.shape == (5, 5, 5, 3)
    assert f[0, 1, 4].tolist() == [2.0, -1.0, -2.0]            # (x, y, z) at array index [z, y, x]
    assert radius_grid(6, 2)[3, 3] == 0 and radius_grid(6, 2)[0, 3] == 3


def test_integer_shift_moves_content_by_plus_shift():
    img = torch.zeros(1, 16, 16, dtype=torch.float64)
    img[0, 8, 8] = 1.0
    out = shift_images(img, torch.tensor([[3.0, -2.0]], dtype=torch.float64))
    peak = np.unravel_index(int(out[0].argmax()), (16, 16))
    assert peak == (6, 11)                                       # y: 8 - 2, x: 8 + 3
    torch.testing.assert_close(out, torch.roll(img, shifts=(-2, 3), dims=(-2, -1)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("D", [32, 33])
def test_subpixel_shift_of_band_limited_cosine(D):
    c = D // 2
    yy, xx = np.meshgrid(np.arange(D) - c, np.arange(D) - c, indexing="ij")
    k = (3, -5)
    s = (1.3, -0.7)
    img = np.cos(2 * np.pi * (k[0] * xx + k[1] * yy) / D)
    want = np.cos(2 * np.pi * (k[0] * (xx - s[0]) + k[1] * (yy - s[1])) / D)
    got = shift_images(torch.from_numpy(img)[None], torch.tensor([s], dtype=torch.float64))
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-10)
    # the half ramp is the full ramp's kx >= 0 part
    full = phase_ramp_2d(torch.tensor([s], dtype=torch.float64), D)
    half = phase_ramp_2d(torch.tensor([s], dtype=torch.float64), D, half=True)
    np.testing.assert_allclose(half[..., :(D + 1) // 2].numpy(), full[..., c:c + (D + 1) // 2].numpy(), atol=1e-12)
    assert fft2_c(torch.from_numpy(img)).shape == (D, D)
