"""Noise estimation from gold-standard half maps (CryoFM App. D.1 and D.2).

Model: half map ``h_j = s + n_j`` with independent noises of equal power. Per Fourier shell
the gold-standard FSC estimates ``FSC = S / (S + N)`` (S, N: signal and noise power of one half
map), so ``SNR = FSC / (1 − FSC)`` and the noise power of one half map is

    N = P / (1 + SNR) = P · (1 − FSC),        P = (⟨|H₁|²⟩ + ⟨|H₂|²⟩) / 2 per shell,

which is CryoFM's estimate (App. D.1). The average of the two half maps has half that power.
Units: ``E|N_k|²`` of :func:`cryovox.core.fft.fftn_c` (see :mod:`cryovox.core.degrade`).

Direction-dependent noise (App. D.2; preferred orientation, anisotropic resolution):
:func:`directional_noise_power` estimates the noise power at every Fourier sample from the
half-map difference ``|H₁ − H₂|² / 2`` (whose expectation is one half map's noise power, with no
signal in it) averaged over a small Gaussian neighbourhood in Fourier space. (Measured on
simulated maps with a ×4 noise cone of ±30°, this recovers the cone's power within a few per
cent, where per-cone FSC estimates with cone kernels wide enough to be stable blurred it to
about half.) Alternatively :func:`orientation_noise_power` takes the noise of each direction
inversely proportional to the number of particle views whose central slice passes near it,
rescaled so that every shell keeps the isotropic estimate's mean.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cryovox.core.fft import fftn_c, freq_grid, rfftn_c
from cryovox.core.fsc import fsc
from cryovox.core.spectral import radial_average, shell_index

__all__ = ["halfmap_noise_power", "shell_power", "directional_noise_power", "orientation_noise_power"]


def shell_power(x: Tensor) -> Tensor:
    """Mean ``|X_k|²`` per shell of a real map ``(D, D, D)``: ``(D // 2 + 1,)`` float64."""
    X = rfftn_c(x.to(torch.float64), 3)
    return radial_average(X.real ** 2 + X.imag ** 2, ndim=3, half=True)


def halfmap_noise_power(h1: Tensor, h2: Tensor, *, min_fsc: float = 0.0, max_fsc: float = 0.999) -> tuple[Tensor, Tensor]:
    """Per-shell noise power of one half map from the gold-standard FSC (App. D.1).

    h1, h2: ``(D, D, D)`` unmasked half maps. Returns ``(noise, fsc)``, each ``(D // 2 + 1,)``
    float64: ``noise = P · (1 − clamp(FSC, min_fsc, max_fsc))`` with ``P`` the shells' mean power of
    the two half maps. (The average map's noise power is ``noise / 2``.)
    """
    if h1.shape != h2.shape or h1.ndim != 3:
        raise ValueError(f"half maps must be two (D, D, D) maps of one shape, got {tuple(h1.shape)}, {tuple(h2.shape)}")
    curve = fsc(h1.to(torch.float64), h2.to(torch.float64))
    p = 0.5 * (shell_power(h1) + shell_power(h2))
    return p * (1.0 - curve.clamp(min_fsc, max_fsc)), curve


def _gaussian_smooth(v: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of a ``(D, D, D)`` grid, normalised at the borders (zero padding)."""
    import torch.nn.functional as F

    n = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-n, n + 1, dtype=v.dtype, device=v.device) / sigma) ** 2)

    def conv(a: Tensor) -> Tensor:
        a = a[None, None]
        for ax in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + ax] = k.numel()
            pad = [0, 0, 0]
            pad[ax] = n
            a = F.conv3d(a, k.reshape(shape), padding=pad)
        return a[0, 0]

    return conv(v) / conv(torch.ones_like(v))


def directional_noise_power(h1: Tensor, h2: Tensor, *, sigma: float = 1.5) -> Tensor:
    """Direction-dependent noise power of one half map, full centred layout ``(D, D, D)`` float64 (App. D.2).

    ``|H₁ − H₂|² / 2`` (an unbiased estimate of one half map's noise power at each ``k``, free of
    signal) averaged over a Gaussian neighbourhood of ``sigma`` Fourier voxels, so the direction
    is resolved to about ``sigma / |k|`` radians. h1, h2: ``(D, D, D)`` unmasked half maps.
    """
    if h1.shape != h2.shape or h1.ndim != 3:
        raise ValueError(f"half maps must be two (D, D, D) maps of one shape, got {tuple(h1.shape)}, {tuple(h2.shape)}")
    d = fftn_c(h1.to(torch.float64) - h2.to(torch.float64))
    return _gaussian_smooth(0.5 * (d.real ** 2 + d.imag ** 2), sigma)


def orientation_noise_power(rot: Tensor, radial_noise: Tensor, size: int, *, plane_width: float = 5.0,
                            floor: float = 0.05) -> Tensor:
    """Direction-dependent noise power ``(D, D, D)`` from the particles' viewing directions.

    rot: ``(N, 3, 3)`` pose matrices (docs/conventions.md); the central slice of particle ``i``
    is the plane through DC orthogonal to its viewing direction ``d_i = Rᵢᵀ ẑ`` (volume frame).
    The number of views sampling direction ``u`` is ``c(u) = Σ_i exp(−(d_i·u)² / (2 sin² w))``
    (``w`` = ``plane_width`` degrees); noise power ∝ ``1 / max(c, floor · mean c)``, scaled so each
    shell's mean equals ``radial_noise`` (per-shell isotropic estimate, ``(D // 2 + 1,)``).
    """
    from cryovox.core.degrade import radial_power_grid

    R = torch.as_tensor(rot, dtype=torch.float64)
    d = R[:, 2, :]                       # Rᵀ ẑ = third row of R
    k = freq_grid(size, 3, dtype=torch.float64)
    u = (k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(-1, 3)
    s2 = 2 * math.sin(math.radians(plane_width)) ** 2
    count = torch.zeros(u.shape[0], dtype=torch.float64)
    for s in range(0, d.shape[0], 256):
        count += torch.exp(-((u @ d[s:s + 256].T) ** 2) / s2).sum(-1)
    count = count.clamp_min(floor * float(count.mean()))
    rel = (1.0 / count).reshape(size, size, size)
    shells = shell_index(size, 3).clamp(max=size // 2 + 1)
    sums = torch.zeros(size // 2 + 2, dtype=torch.float64).index_add_(0, shells.reshape(-1), rel.reshape(-1))
    counts = torch.bincount(shells.reshape(-1), minlength=size // 2 + 2).to(torch.float64)
    mean = sums / counts.clamp_min(1)
    iso = radial_power_grid(torch.as_tensor(radial_noise, dtype=torch.float64), size, dtype=torch.float64)
    return (iso * rel / mean[shells]).to(torch.float32)
