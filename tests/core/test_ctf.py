"""CTF against independent NumPy oracles (RELION 3.1's bilinear-form path, cryoDRGN's form)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryovox.core.ctf import compute_ctf, ctf_1d, ctf_first_zero, electron_wavelength
from cryovox.core.fft import fftn_c, ifftn_c, irfftn_c, rfftn_c
from tests.conftest import SHARED, needs_shared_data


def relion_bilinear_ctf(size, apix, du, dv, ang_deg, kv, cs_mm, q0, ps_deg, bfac, half):
    """RELION 3.1 evaluates defocus as the bilinear form sᵀ A s with A = Qᵀ diag(-U, -V) Q."""
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    a = np.deg2rad(ang_deg)
    Q = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    A = Q.T @ np.diag([-du, -dv]) @ Q
    ky = np.arange(size) - size // 2
    kx = np.arange(size // 2 + 1) if half else ky
    sx, sy = np.meshgrid(kx / (size * apix), ky / (size * apix))   # (y, x) arrays
    quad = A[0, 0] * sx * sx + 2 * A[0, 1] * sx * sy + A[1, 1] * sy * sy
    u2 = sx * sx + sy * sy
    gamma = (np.pi * lam * quad + np.pi / 2 * cs_mm * 1e7 * lam ** 3 * u2 ** 2
             - np.deg2rad(ps_deg) - np.arctan(q0 / np.sqrt(1 - q0 ** 2)))
    return -np.sin(gamma) * np.exp(-bfac / 4 * u2)


PARAMS = [  # (size, apix, U, V, angle, kV, Cs, Q0, phase shift, B)
    (64, 1.3, 15000.0, 14200.0, 37.0, 300.0, 2.7, 0.1, 0.0, 0.0),
    (65, 0.9, 8000.0, 9500.0, -120.0, 200.0, 0.01, 0.07, 45.0, 80.0),
    (32, 3.0, 25000.0, 25000.0, 0.0, 100.0, 4.1, 0.2, 90.0, 20.0),
]


@pytest.mark.parametrize("half", [True, False])
def test_matches_relion_bilinear_form(half):
    for p in PARAMS:
        size = p[0]
        got = compute_ctf(*p, half=half, dtype=torch.float64)[0].numpy()
        want = relion_bilinear_ctf(*p, half=half)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_batched_per_image_parameters_and_dtypes():
    du = torch.tensor([15000.0, 9000.0, 21000.0], dtype=torch.float64)
    ang = torch.tensor([0.0, 45.0, 170.0], dtype=torch.float64)
    ctf = compute_ctf(48, 1.1, du, du - 500, ang, 300.0, 2.7, 0.1, half=True)
    assert ctf.shape == (3, 48, 25) and ctf.dtype == torch.float64
    for b in range(3):
        want = relion_bilinear_ctf(48, 1.1, du[b].item(), du[b].item() - 500, ang[b].item(),
                                   300.0, 2.7, 0.1, 0.0, 0.0, half=True)
        np.testing.assert_allclose(ctf[b].numpy(), want, atol=1e-10)
    c32 = compute_ctf(48, 1.1, 15000.0, 14500.0, 0.0, 300.0, 2.7, 0.1)
    assert c32.dtype == torch.float32 and c32.shape == (1, 48, 25)
    np.testing.assert_allclose(c32[0].numpy(), relion_bilinear_ctf(48, 1.1, 15000.0, 14500.0, 0.0, 300.0,
                                                                   2.7, 0.1, 0.0, 0.0, True), atol=1e-6)


def test_half_layout_matches_rfft_layout_of_full():
    """Multiplying an rfft by the half CTF = multiplying the full transform by the full CTF."""
    p = PARAMS[1]
    size = p[0]
    img = torch.randn(size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = ifftn_c(fftn_c(img, 2) * compute_ctf(*p, half=False, dtype=torch.float64)[0], 2).real
    half = irfftn_c(rfftn_c(img, 2) * compute_ctf(*p, half=True, dtype=torch.float64)[0], size, 2)
    torch.testing.assert_close(full, half, atol=1e-10, rtol=0)


def test_equals_minus_cryodrgn_form():
    """cryoDRGN writes sqrt(1-w²)·sin γ' − w·cos γ' with γ' = γ + K3: that is −(RELION's CTF)."""
    size, apix, du, dv, ang, kv, cs, w, ps = 40, 1.7, 12000.0, 11000.0, 25.0, 300.0, 2.7, 0.1, 30.0
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))  # RELION's constants in cryoDRGN's form
    k = np.arange(size) - size // 2
    sx, sy = np.meshgrid(k / (size * apix), k / (size * apix))
    s2 = sx ** 2 + sy ** 2
    df = 0.5 * (du + dv + (du - dv) * np.cos(2 * (np.arctan2(sy, sx) - np.deg2rad(ang))))
    g = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam ** 3 * s2 ** 2) - np.deg2rad(ps)
    cryodrgn = np.sqrt(1 - w ** 2) * np.sin(g) - w * np.cos(g)
    ours = compute_ctf(size, apix, du, dv, ang, kv, cs, w, ps, half=False, dtype=torch.float64)[0].numpy()
    np.testing.assert_allclose(ours, -cryodrgn, atol=1e-10)


def test_wavelength_300kv():
    # textbook value 0.019687 Å at 300 kV
    assert electron_wavelength(300.0) == pytest.approx(0.0196875, abs=2e-6)


@pytest.mark.parametrize("defocus,kv", [(10000.0, 300.0), (22000.0, 200.0)])
def test_first_zero_analytic_cs0_q0(defocus, kv):
    """Cs = 0, Q0 = 0: CTF = sin(π λ Δf s²), first zero at s = 1/sqrt(λ Δf)."""
    lam = electron_wavelength(kv)
    s0 = 1.0 / math.sqrt(lam * defocus)
    assert ctf_first_zero(defocus, kv) == pytest.approx(s0, rel=1e-12)
    s = torch.tensor([0.98 * s0, s0, 1.02 * s0], dtype=torch.float64)
    prof = ctf_1d(s, defocus, defocus, 0.0, kv, 0.0, 0.0)[0]
    assert prof[0] > 0.05 and abs(prof[1]) < 1e-9 and prof[2] < -0.05
    # on a grid: the sign change along x happens between the two pixels around s0
    size, apix = 256, 1.0
    row = compute_ctf(size, apix, defocus, defocus, 0.0, kv, 0.0, 0.0, dtype=torch.float64)[0, size // 2]
    j = int(s0 * size * apix)                      # last pixel below the zero
    assert row[1:j + 1].min() > 0 and row[j + 1] < 0


def test_first_zero_with_cs_and_amplitude_contrast():
    s0 = ctf_first_zero(15000.0, 300.0, 2.7, 0.1)
    prof = ctf_1d(torch.tensor([s0], dtype=torch.float64), 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    assert abs(prof.item()) < 1e-9


def test_astigmatism_angle_axis():
    """Along the U direction the defocus is U; along U+90° it is V."""
    s = torch.linspace(0.01, 0.2, 50, dtype=torch.float64)
    along_u = ctf_1d(s, 20000.0, 10000.0, 30.0, 300.0, 2.7, 0.1, direction=30.0)
    iso_u = ctf_1d(s, 20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1)
    along_v = ctf_1d(s, 20000.0, 10000.0, 30.0, 300.0, 2.7, 0.1, direction=120.0)
    iso_v = ctf_1d(s, 10000.0, 10000.0, 0.0, 300.0, 2.7, 0.1)
    torch.testing.assert_close(along_u, iso_u, atol=1e-12, rtol=0)
    torch.testing.assert_close(along_v, iso_v, atol=1e-12, rtol=0)


def test_dc_value_and_bfactor_envelope():
    c = compute_ctf(32, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0, dtype=torch.float64)
    assert c[0, 16, 0].item() == pytest.approx(0.1, abs=1e-12)      # -sin(-K3) = Q0 at DC
    cb = compute_ctf(32, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 100.0, dtype=torch.float64)
    s2 = (5 / 64) ** 2
    assert (cb[0, 16, 5] / c[0, 16, 5]).item() == pytest.approx(math.exp(-100 / 4 * s2), rel=1e-12)


@needs_shared_data
def test_cryodrgn_ctf_pickle_batch():
    """Per-particle parameters from cryoDRGN's real CTF array (box 180, 2.95 Å/px, astigmatic):
    ours = −cryoDRGN's compute_ctf, which differs from RELION only in the wavelength constants
    (12.2639 and 0.97845e-6 instead of 12.2643247 and 0.978466e-6)."""
    import pickle

    with open(SHARED / "cryodrgn/ctf2.pkl", "rb") as f:
        params = np.asarray(pickle.load(f), dtype=np.float64)[:6]
    D, apix = int(params[0, 0]), float(params[0, 1])
    assert D == 180 and apix == pytest.approx(2.95)
    t = {name: torch.tensor(params[:, i]) for i, name in enumerate(["D", "apix", "du", "dv", "ang", "kv", "cs", "w", "ps"])}
    ours = compute_ctf(D, apix, t["du"], t["dv"], t["ang"], t["kv"], t["cs"], t["w"], t["ps"], half=False).numpy()
    assert ours.shape == (6, D, D) and ours.dtype == np.float64
    k = np.arange(D) - D // 2
    sx, sy = np.meshgrid(k / (D * apix), k / (D * apix))
    for b, (_, _, du, dv, ang, kv, cs, w, ps) in enumerate(params):
        v = kv * 1000
        for lam, tol in [(12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6)), 1e-9),    # RELION's constants
                         (12.2639 / np.sqrt(v + 0.97845e-6 * v ** 2), 2e-2)]:          # cryoDRGN's own: Δλ/λ ≈ 3e-5
            s2 = sx ** 2 + sy ** 2
            df = 0.5 * (du + dv + (du - dv) * np.cos(2 * (np.arctan2(sy, sx) - np.radians(ang))))
            g = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam ** 3 * s2 ** 2) - np.radians(ps)
            np.testing.assert_allclose(ours[b], -(np.sqrt(1 - w ** 2) * np.sin(g) - w * np.cos(g)), atol=tol)
