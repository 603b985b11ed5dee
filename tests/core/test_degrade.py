"""Degradation operators: noise power, likelihood, cone and wedge masks, projector, adjoint, pseudo-inverse."""

import math

import numpy as np
import pytest
import torch

from cryovox.core.degrade import (add_noise, amplify_power, apply_fourier_mask, cone_mask, gaussian_nll,
                                  project_adjoint, project_maps, project_pinv, radial_power_grid, wedge_fill,
                                  wedge_mask)
from cryovox.core.fft import fftn_c, radius_grid, shift_images
from cryovox.core.rotations import euler_to_matrix, random_rotations
from tests.synthetic import gaussian_blobs


def blob(D, sigma=2.0, seed=0, n=4):
    return torch.from_numpy(gaussian_blobs(D, seed=seed, n=n, sigma=sigma))


def test_radial_power_grid_interpolates_and_rescales():
    radial = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    g = radial_power_grid(radial, 8)
    assert g[4, 4, 4] == 5.0 and g[4, 4, 5] == 4.0 and g[4, 4, 7] == 2.0
    assert g[4, 5, 5] == pytest.approx(4.0 - (math.sqrt(2) - 1))          # linear in |k|
    # box 16 at the same pixel size: shell 2 of the 16-box is shell 1 of the 8-box; ×(16/8)³
    g16 = radial_power_grid(radial, 16, source_size=8)
    assert g16[8, 8, 10] == pytest.approx(4.0 * 8)


def test_add_noise_has_the_requested_power():
    D = 16
    power = radial_power_grid(torch.linspace(4.0, 1.0, D // 2 + 1) * D ** 3, D, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = add_noise(torch.zeros(40, D, D, D, dtype=torch.float64), power, g)
    F = fftn_c(n)
    measured = (F.real ** 2 + F.imag ** 2).mean(0)
    r = radius_grid(D, 3)
    for lo, hi in [(2, 4), (4, 6), (6, 8)]:
        sel = (r >= lo) & (r < hi)
        assert measured[sel].mean() / power[sel].mean() == pytest.approx(1.0, abs=0.04)
    # white noise of unit variance per voxel has power D³
    w = add_noise(torch.zeros(D, D, D, dtype=torch.float64), torch.full((D, D, D), float(D ** 3), dtype=torch.float64), g)
    assert w.var().item() == pytest.approx(1.0, abs=0.05)


def test_gaussian_nll_matches_numpy():
    D = 8
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, D, D, D, generator=g, dtype=torch.float64)
    power = torch.rand(D, D, D, generator=g, dtype=torch.float64) + 0.5
    mask = (torch.rand(D, D, D, generator=g) > 0.3).double()
    r = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift((x - y).numpy())))
    expected = (np.abs(r) ** 2 / power.numpy() * mask.numpy()).sum()
    assert gaussian_nll(x, y, power, mask).item() == pytest.approx(expected, rel=1e-10)


def test_cone_mask_solid_angle_and_symmetry():
    D = 48
    r = radius_grid(D, 3)
    sel = (r > 10) & (r <= 24)
    c = cone_mask(D, 30, "z")
    assert c[sel].double().mean().item() == pytest.approx(1 - math.cos(math.radians(30)), abs=0.005)
    inner = c[1:, 1:, 1:]
    assert torch.equal(inner, inner.flip(0, 1, 2))                      # k → −k
    assert c[24, 24, 24] and c[30, 24, 24] and not c[24, 24, 30]        # DC, +z axis in, x axis out
    p = torch.ones(D, D, D)
    assert amplify_power(p, c, 3.0)[sel].mean().item() == pytest.approx(1 + 2 * c[sel].float().mean().item(), rel=1e-5)


def test_wedge_mask_matches_tan_rule_and_removes_a_third():
    D = 16
    m = wedge_mask(D, (-60, 60), "y").numpy()
    k = np.arange(D) - D // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    oracle = (np.abs(kz) <= np.tan(np.radians(60)) * np.abs(kx) + 1e-9) | ((kx == 0) & (kz == 0))
    assert np.array_equal(m, oracle)
    mx = wedge_mask(D, (-60, 60), "x").numpy()
    assert np.array_equal(mx, (np.abs(kz) <= np.tan(np.radians(60)) * np.abs(ky) + 1e-9) | ((ky == 0) & (kz == 0)))
    # asymmetric range: only elevations in [-30, 60] measured (elevation folded to kx > 0)
    ma = wedge_mask(D, (-30, 60), "y").numpy()
    elev = np.degrees(np.arctan2(np.where(kx < 0, -kz, kz), np.abs(kx)))
    elev = np.where(kx == 0, np.where(kz == 0, 0, 90), elev)
    assert np.array_equal(ma, ((elev >= -30 - 1e-9) & (elev <= 60 + 1e-9)))
    D = 48
    r = radius_grid(D, 3)
    sel = (r > 10) & (r <= 24)
    assert 1 - wedge_mask(D)[sel].double().mean().item() == pytest.approx(1 / 3, abs=0.005)


def test_wedge_operator_is_an_orthogonal_projector_and_fill_is_its_pseudo_inverse_step():
    D = 16
    g = torch.Generator().manual_seed(2)
    x, y, est = torch.randn(3, D, D, D, generator=g, dtype=torch.float64)
    m = wedge_mask(D)
    Ax = apply_fourier_mask(x, m)
    assert torch.allclose(apply_fourier_mask(Ax, m), Ax, atol=1e-12)                    # idempotent
    assert (Ax * y).sum().item() == pytest.approx((x * apply_fourier_mask(y, m)).sum().item(), rel=1e-10)  # self-adjoint
    obs = apply_fourier_mask(x, m)
    filled = wedge_fill(est, obs, m)
    assert torch.allclose(apply_fourier_mask(filled, m), obs, atol=1e-10)               # data consistent
    assert torch.allclose(filled - apply_fourier_mask(filled, m), est - apply_fourier_mask(est, m), atol=1e-10)
    # equals est + A⁺(obs − A est) with A⁺ = A
    assert torch.allclose(filled, est + apply_fourier_mask(obs - apply_fourier_mask(est, m), m), atol=1e-10)


def test_projection_adjoint_inner_products():
    D = 16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(D, D, D, generator=g, dtype=torch.float64)
    rot = random_rotations(5, g)
    shifts = torch.randn(5, 2, generator=g, dtype=torch.float64) * 2
    y = torch.randn(5, D, D, generator=g, dtype=torch.float64)
    lhs = (project_maps(x, rot, shifts) * y).sum().item()
    rhs = (x * project_adjoint(y, rot, shifts)).sum().item()
    assert lhs == pytest.approx(rhs, rel=1e-9)


def test_projection_matches_real_space_sum_and_shift_convention():
    D = 24
    vol = blob(D, seed=4)
    # identity pose: projection along z is the sum over the z axis
    proj = project_maps(vol, torch.eye(3, dtype=torch.float64)[None])[0]
    direct = vol.sum(0)
    # (trilinear slicing at pad 2 with gridding correction: a few per cent from exact at grid hits)
    assert (proj - direct).norm() / direct.norm() < 0.08
    # a 90° tilt about y (RELION rot=0, tilt=90, psi=0) projects along x
    R = euler_to_matrix(0.0, 90.0, 0.0)[None]
    p90 = project_maps(vol, R)[0]
    # R maps (x, y, z) to (x', y', z') = (-z, y, x): P(x', y') = Σ_x V(x, y', z = -x')
    c = D // 2
    along_x = vol.sum(2)                                     # [z, y]
    oracle = along_x[(2 * c - torch.arange(D)) % D].T        # [y', x'] = along_x[-x', y']
    assert (p90 - oracle).norm() / oracle.norm() < 0.08
    shifts = torch.tensor([[1.5, -2.25]], dtype=torch.float64)
    a = project_maps(vol, R, shifts)
    b = shift_images(project_maps(vol, R), shifts)
    assert (a - b).norm() / b.norm() < 1e-6


def test_projection_pseudo_inverse_recovers_a_band_limited_map():
    D = 16
    vol = blob(D, sigma=1.8, seed=5)
    g = torch.Generator().manual_seed(6)
    rot = random_rotations(600, g)
    shifts = torch.rand(600, 2, generator=g, dtype=torch.float64) * 2 - 1
    images = project_maps(vol, rot, shifts)
    rec = project_pinv(images, rot, shifts, wiener=1e-4)
    inside = radius_grid(D, 3) < D / 2 - 2
    err = (rec - vol)[inside].norm() / vol[inside].norm()
    assert err < 0.05
