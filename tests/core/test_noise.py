"""Noise estimation from half maps: isotropic (gold-standard FSC) and direction-dependent."""

import pytest
import torch

from cryovox.core.degrade import add_noise, amplify_power, cone_mask, radial_power_grid
from cryovox.core.fft import radius_grid
from cryovox.core.noise import directional_noise_power, halfmap_noise_power, orientation_noise_power, shell_power
from cryovox.core.rotations import euler_to_matrix


def _signal(D, g):
    r = radius_grid(D, 3, dtype=torch.float64)
    power = 50.0 * D ** 3 * torch.exp(-(r / 6) ** 2) + 1e-3
    return add_noise(torch.zeros(D, D, D, dtype=torch.float64), power, g)


def test_shell_power_is_parseval_consistent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 12, 12, generator=g, dtype=torch.float64)
    X = torch.fft.fftn(x)
    assert shell_power(x)[0].item() == pytest.approx(x.sum().item() ** 2)
    # white noise: mean power per sample ≈ D³ · variance in every shell beyond the first few
    assert shell_power(x)[3:].mean().item() == pytest.approx((X.abs() ** 2).mean().item(), rel=0.15)


@pytest.mark.parametrize("seed", [1, 2])
def test_halfmap_noise_power_recovers_known_spectrum(seed):
    D = 32
    g = torch.Generator().manual_seed(seed)
    s = _signal(D, g)
    shells = torch.arange(D // 2 + 1, dtype=torch.float64)
    true = 2.0 * (1 + (shells / 8) ** 2) * D ** 3            # per-sample power, rising with frequency
    P = radial_power_grid(true, D, dtype=torch.float64)
    h1, h2 = add_noise(s, P, g), add_noise(s, P, g)
    est, curve = halfmap_noise_power(h1, h2)
    assert curve[2] > 0.9 and curve[-1] < 0.1                  # a realistic FSC: signal at low, noise at high k
    rel = (est / true - 1)[4:]                                 # shells ≥ 4 (> 190 samples each)
    assert rel.abs().max() < 0.10


def test_directional_noise_power_recovers_an_amplified_cone():
    D = 32
    g = torch.Generator().manual_seed(3)
    s = _signal(D, g)
    base = radial_power_grid(torch.full((D // 2 + 1,), 2.0 * D ** 3), D, dtype=torch.float64)
    amp = amplify_power(base, cone_mask(D, 30, "z"), 4.0)
    h1, h2 = add_noise(s, amp, g), add_noise(s, amp, g)
    est = directional_noise_power(h1, h2)
    r = radius_grid(D, 3)
    sel = (r >= 6) & (r <= 15)
    inside, outside = cone_mask(D, 20) & sel, ~cone_mask(D, 45) & sel
    assert (est[inside] / amp[inside]).mean().item() == pytest.approx(1.0, abs=0.1)
    assert (est[outside] / amp[outside]).mean().item() == pytest.approx(1.0, abs=0.1)
    # the isotropic estimate cannot see the cone: its shell average mixes both
    iso, _ = halfmap_noise_power(h1, h2)
    assert iso[10] / (2.0 * D ** 3) > 1.2


def test_orientation_noise_power_top_views_only():
    D = 16
    rot = euler_to_matrix(torch.linspace(0, 350, 36), torch.zeros(36), torch.zeros(36))   # all views along z
    radial = torch.full((D // 2 + 1,), 3.0)
    p = orientation_noise_power(rot, radial, D)
    c = D // 2
    assert p[c + 5, c, c] > 10 * p[c, c, c + 5]             # kz axis never sampled, kx axis always
    r = radius_grid(D, 3).round()
    for shell in (3, 5, 7):
        assert p[r == shell].double().mean().item() == pytest.approx(3.0, rel=1e-4)   # shell means kept
