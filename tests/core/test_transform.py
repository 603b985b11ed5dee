"""Volume transforms: spline interpolation, rotation convention, round trips, crops and flips.

Oracles: scipy.ndimage.map_coordinates (cubic spline, periodic), analytic blob positions,
and an FSC computed here with NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryovox.core.rotations import euler_to_matrix, random_rotations
from cryovox.core.transform import (affine_resample, center_crop_pad, flip, random_crop, random_flip_axes, rotate,
                                    spline_prefilter)


def blob_volume(D: int, n_atoms: int = 300, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    """Gaussian 'atoms' (σ in voxels) inside a sphere of radius 0.3·D about voxel D//2,
    computed analytically in Fourier space (no interpolation), float64 [z, y, x]."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n_atoms, 3))
    pts = pts / np.linalg.norm(pts, axis=1, keepdims=True) * rng.uniform(0, 1, (n_atoms, 1)) ** (1 / 3) * 0.3 * D
    k = np.fft.fftfreq(D)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    F = np.zeros((D, D, D), complex)
    c = D // 2
    for x, y, z in pts:
        F += np.exp(-2j * np.pi * (kx * (x + c) + ky * (y + c) + kz * (z + c)))
    F *= np.exp(-2 * np.pi**2 * sigma**2 * (kx**2 + ky**2 + kz**2))
    return np.fft.ifftn(F).real


def fsc_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC per shell 0..D//2 (rounded radii), NumPy only."""
    D = a.shape[0]
    A, B = np.fft.fftshift(np.fft.fftn(a)), np.fft.fftshift(np.fft.fftn(b))
    k = np.arange(D) - D // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    out = []
    for s in range(D // 2 + 1):
        m = r == s
        out.append((A[m] * B[m].conj()).sum().real / np.sqrt((abs(A[m]) ** 2).sum() * (abs(B[m]) ** 2).sum()))
    return np.array(out)


def test_cubic_identity_reproduces_samples():
    v = torch.randn(12, 13, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = affine_resample(v, torch.eye(3, dtype=torch.float64))
    assert torch.allclose(out, v, atol=1e-10)


def test_prefilter_inverts_the_sampled_spline():
    v = torch.randn(10, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = spline_prefilter(v).numpy()
    # Σ c[k] β3(i - k) with β3 at integers = [1/6, 2/3, 1/6], periodic, along each axis
    f = c
    for ax in range(3):
        f = (np.roll(f, 1, ax) + 4 * f + np.roll(f, -1, ax)) / 6
    assert np.abs(f - v.numpy()).max() < 1e-10


def test_rotation_matches_scipy_cubic_spline():
    """Oracle: scipy's cubic spline (periodic) at the same pulled-back coordinates."""
    from scipy.ndimage import map_coordinates

    D = 16
    v = torch.randn(D, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    R = euler_to_matrix(30.0, 50.0, -70.0)
    out = rotate(v, R).numpy()
    c = D // 2
    zz, yy, xx = np.meshgrid(*[np.arange(D) - c] * 3, indexing="ij")
    p = np.stack([xx, yy, zz], -1) @ R.numpy()  # rows: Rᵀ p
    coords = np.stack([p[..., 2] + c, p[..., 1] + c, p[..., 0] + c])
    ref = map_coordinates(v.numpy(), coords, order=3, mode="grid-wrap")
    inside = ((coords >= 0) & (coords <= D - 1)).all(0)
    assert inside.sum() > 1500
    assert np.abs(out - ref)[inside].max() < 1e-9


def test_rotation_moves_content_at_q_to_Rq():
    D = 32
    q = np.array([6.0, -3.0, 2.0])  # (x, y, z) from the centre, voxels
    c = D // 2
    zz, yy, xx = np.meshgrid(*[np.arange(D) - c] * 3, indexing="ij")
    blob = np.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2 + (zz - q[2]) ** 2) / (2 * 1.5**2))
    R = euler_to_matrix(20.0, 70.0, 110.0)
    out = rotate(torch.from_numpy(blob), R).numpy()
    centroid = np.array([(out * xx).sum(), (out * yy).sum(), (out * zz).sum()]) / out.sum()
    assert np.allclose(centroid, R.numpy() @ q, atol=0.02)
    # a pure scale: content at q moves to q / s when sampling at s · p
    s = 1.25
    scaled = affine_resample(torch.from_numpy(blob), torch.eye(3, dtype=torch.float64) * s).numpy()
    centroid = np.array([(scaled * xx).sum(), (scaled * yy).sum(), (scaled * zz).sum()]) / scaled.sum()
    assert np.allclose(centroid, q / s, atol=0.02)


def test_rotate_then_inverse_keeps_fsc_to_0p8_nyquist():
    """The issue's criterion: FSC(map, R⁻¹(R map)) ≥ 0.95 up to 0.8 × Nyquist (cubic);
    trilinear interpolation fails it, so the test can tell the two apart."""
    D = 48
    v = blob_volume(D, sigma=1.0)
    V = torch.from_numpy(v)
    cut = int(0.8 * D / 2)
    for R in random_rotations(3, generator=torch.Generator().manual_seed(0)):
        back = rotate(rotate(V, R), R.T).numpy()
        assert fsc_numpy(v, back)[: cut + 1].min() >= 0.95
    R = random_rotations(1, generator=torch.Generator().manual_seed(0))[0]
    back1 = rotate(rotate(V, R, order=1), R.T, order=1).numpy()
    assert fsc_numpy(v, back1)[: cut + 1].min() < 0.95


def test_batched_rotations_equal_single_ones():
    D = 20
    v = torch.from_numpy(blob_volume(D, n_atoms=40, seed=3))
    Rs = random_rotations(3, generator=torch.Generator().manual_seed(5))
    batch = rotate(v, Rs)
    assert batch.shape == (3, D, D, D)
    for k in range(3):
        assert torch.allclose(batch[k], rotate(v, Rs[k]), atol=1e-12)
    # a larger output box: the input box reproduced exactly in the middle, ~0 around it
    big = rotate(v, torch.eye(3, dtype=torch.float64), out_size=26)
    ref = center_crop_pad(v, 26)
    assert torch.allclose(big[3:23, 3:23, 3:23], ref[3:23, 3:23, 3:23], atol=1e-10)
    assert (big - ref).abs().max() < 1e-2 * v.abs().max()
    small = rotate(v, torch.eye(3, dtype=torch.float64), out_size=12)
    assert torch.allclose(small, center_crop_pad(v, 12), atol=1e-10)


@pytest.mark.parametrize("n, m", [(10, 6), (11, 6), (10, 7), (11, 7), (6, 10), (7, 10), (6, 11), (7, 11)])
def test_center_crop_pad_keeps_the_centre_voxel(n, m):
    v = torch.arange(n**3, dtype=torch.float64).reshape(n, n, n)
    out = center_crop_pad(v, m)
    assert out.shape == (m, m, m)
    assert out[m // 2, m // 2, m // 2] == v[n // 2, n // 2, n // 2]
    # oracle: every output voxel i holds input voxel i - m//2 + n//2 (or 0 outside)
    i = np.arange(m) - m // 2 + n // 2
    ok = (i >= 0) & (i < n)
    ref = np.zeros((m, m, m))
    ref[np.ix_(ok, ok, ok)] = v.numpy()[np.ix_(i[ok], i[ok], i[ok])]
    assert np.array_equal(out.numpy(), ref)


def test_flip_reflects_about_the_centre_voxel():
    for D in (8, 9):
        c = D // 2
        v = torch.zeros(D, D, D)
        v[c + 1, c - 2, c + 3] = 1.0  # (x, y, z) = (3, -2, 1) from the centre
        out = flip(v, (2,))           # x → -x
        assert out[c + 1, c - 2, c - 3] == 1.0 and out.sum() == 1.0
        out = flip(v, (0, 1, 2))
        assert out[c - 1, c + 2, c - 3] == 1.0
        assert torch.equal(flip(flip(v, (0, 2)), (0, 2)), v)


def test_random_crop_and_flips_are_seeded_and_in_bounds():
    v = torch.arange(12**3, dtype=torch.float32).reshape(12, 12, 12)
    a, start_a = random_crop(v, 5, torch.Generator().manual_seed(3))
    b, start_b = random_crop(v, 5, torch.Generator().manual_seed(3))
    assert start_a == start_b and torch.equal(a, b)
    z, y, x = start_a
    assert torch.equal(a, v[z:z + 5, y:y + 5, x:x + 5])
    starts = {random_crop(v, 5, torch.Generator().manual_seed(s))[1] for s in range(200)}
    assert min(min(s) for s in starts) == 0 and max(max(s) for s in starts) == 7
    axes = [random_flip_axes(torch.Generator().manual_seed(s)) for s in range(400)]
    freq = [sum(a in ax for ax in axes) / 400 for a in range(3)]
    assert all(0.4 < f < 0.6 for f in freq)
    with pytest.raises(ValueError):
        random_crop(v, 13)
