"""Filters against analytic responses; masks against brute-force NumPy distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryovox.core.filters import bandpass, highpass, lowpass, lowpass_weights
from cryovox.core.masks import auto_solvent_mask, spherical_mask, threshold_mask


def cosine(size, ndim, k, amp=1.0, phase=0.0):
    coords = np.meshgrid(*([np.arange(size) - size // 2] * ndim), indexing="ij")[::-1]
    return amp * np.cos(2 * np.pi * sum(ki * c for ki, c in zip(k, coords)) / size + phase)


def raised(r, start, width):
    t = np.clip((r - start) / width, 0, 1)
    return 0.5 + 0.5 * np.cos(np.pi * t)


@pytest.mark.parametrize("size", [48, 49])
def test_lowpass_response_of_cosines(size):
    apix, res = 1.5, 6.0
    rc = size * apix / res                          # 12 (size 48) / 12.25 (49)
    ks = [(3, 4), (12, 5), (0, 13), (20, 0)]        # |k| = 5, 13, 13, 20
    x = sum(cosine(size, 2, k) for k in ks)
    want = sum(raised(np.hypot(*k), rc, 2.0) * cosine(size, 2, k) for k in ks)
    got = lowpass(torch.from_numpy(x), apix, res, ndim=2, edge_width=2.0)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    # 3D, float32, hard edge
    x3 = cosine(size, 3, (2, 3, 1)) + cosine(size, 3, (9, 9, 3))   # |k| ≈ 3.7 and 13.1
    got3 = lowpass(torch.from_numpy(x3).float(), apix, res, ndim=3, edge_width=0)
    assert got3.dtype == torch.float32
    np.testing.assert_allclose(got3.numpy(), cosine(size, 3, (2, 3, 1)), atol=1e-5)


def test_highpass_and_bandpass():
    size, apix = 64, 1.0
    ks = [(1, 1), (4, 0), (10, 2), (30, 0)]         # |k| = 1.4, 4, 10.2, 30
    x = torch.from_numpy(sum(cosine(size, 2, k) for k in ks))
    # keep 64/16 = 4 px (edge below: 2..4) up to 64/4 = 16 px (edge 16..18)
    got = bandpass(x, apix, 16.0, 4.0, ndim=2)
    want = sum((1 - raised(np.hypot(*k), 2.0, 2.0)) * raised(np.hypot(*k), 16.0, 2.0) * cosine(size, 2, k) for k in ks)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    np.testing.assert_allclose(highpass(x, apix, 16.0, ndim=2).numpy(),
                               sum(cosine(size, 2, k) for k in ks[1:]), atol=1e-10)
    with pytest.raises(ValueError):
        bandpass(x, apix, 4.0, 16.0, ndim=2)


def test_lowpass_weights_values():
    w = lowpass_weights(32, 2, 5.0, 2.0, half=False)
    r = np.hypot(*np.meshgrid(np.arange(32) - 16, np.arange(32) - 16))
    np.testing.assert_allclose(w.numpy(), raised(r, 5.0, 2.0), atol=1e-12)


def test_spherical_mask_profile_and_volume():
    m = spherical_mask(40, 10.0, 4.0, 3, dtype=torch.float64)
    z, y, x = np.meshgrid(*([np.arange(40) - 20] * 3), indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    np.testing.assert_allclose(m.numpy(), raised(r, 10.0, 4.0), atol=1e-12)
    hard = spherical_mask(64, 20.0, 0.0, 3)
    assert hard.sum().item() == pytest.approx(4 / 3 * math.pi * 20 ** 3, rel=0.01)
    disc = spherical_mask(33, 8.0, 0.0, 2)
    assert disc[16, 16] == 1 and disc[16, 16 + 8] == 1 and disc[16, 16 + 9] == 0


def brute_distance(points_from, points_to):
    d = np.sqrt(((points_from[:, None, :] - points_to[None, :, :]) ** 2).sum(-1))
    return d.min(1)


@pytest.mark.parametrize("extend,soft", [(2.0, 3.0), (0.0, 2.0), (-1.5, 0.0)])
def test_threshold_mask_matches_brute_force(extend, soft):
    size = 18
    g = np.random.default_rng(1)
    vol = np.zeros((size,) * 3)
    vol[6:11, 5:9, 7:12] = 1.0                       # an irregular object: box + blob
    vol[9:13, 9:13, 4:8] = 0.8
    vol += 0.05 * g.standard_normal(vol.shape)
    thr = 0.5
    grid = np.stack(np.meshgrid(*([np.arange(size)] * 3), indexing="ij"), -1).reshape(-1, 3).astype(float)
    binary = (vol >= thr).reshape(-1)
    if extend >= 0:
        core = brute_distance(grid, grid[binary]) <= extend
    else:
        core = binary.copy()
        core[binary] = brute_distance(grid[binary], grid[~binary]) > -extend
    d = brute_distance(grid, grid[core])
    want = (d <= 0).astype(float) if soft == 0 else raised(d, 0.0, soft)
    got = threshold_mask(torch.from_numpy(vol), thr, extend, soft)
    assert got.dtype == torch.float64 and got.shape == vol.shape
    np.testing.assert_allclose(got.numpy().reshape(-1), want, atol=1e-12)


def test_auto_solvent_mask_covers_particle_and_ignores_scale_and_offset():
    size, apix = 40, 2.0
    z, y, x = np.meshgrid(*([np.arange(size) - size // 2] * 3), indexing="ij")
    blob = np.exp(-((x - 3) ** 2 + y ** 2 + (z + 2) ** 2) / (2 * 4.0 ** 2))
    blob += 0.7 * np.exp(-((x + 5) ** 2 + (y - 4) ** 2 + z ** 2) / (2 * 3.0 ** 2))
    noisy = blob + 0.05 * np.random.default_rng(0).standard_normal(blob.shape)
    mask, thr = auto_solvent_mask(torch.from_numpy(noisy), apix)
    m = mask.numpy()
    assert m[size // 2 - 2, size // 2, size // 2 + 3] == 1.0           # blob centre (z, y, x)
    assert (m[blob > 0.3] == 1.0).all()                                  # particle fully inside
    assert m[:4, :4, :4].max() == 0.0                                    # corners are solvent
    assert 0.0 < m.mean() < 0.25
    mask2, thr2 = auto_solvent_mask(torch.from_numpy(3.0 * noisy - 7.0), apix)
    np.testing.assert_allclose(mask2.numpy(), m, atol=1e-9)
    assert thr2 == pytest.approx(3.0 * thr - 7.0, rel=1e-9)
