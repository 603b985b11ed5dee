"""Small synthetic test maps shared by several test files."""

from __future__ import annotations

import numpy as np


def gaussian_blobs(D: int, seed: int = 0, n: int = 4, sigma: float = 2.0) -> np.ndarray:
    """``n`` Gaussian blobs (width ``sigma`` px, amplitudes 0.5–1.5) within ``D/5`` px of the centre
    voxel of a ``(D, D, D)`` float64 map: smooth (negligible power at Nyquist) and off-centre."""
    g = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:D, :D, :D] - D // 2
    v = np.zeros((D, D, D))
    for _ in range(n):
        c = g.uniform(-D / 5, D / 5, 3)
        v += g.uniform(0.5, 1.5) * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * sigma ** 2))
    return v
