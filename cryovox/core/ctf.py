"""Contrast transfer function, exactly as RELION's ``CTF::getCTF`` computes it.

With spatial frequency ``s = (sx, sy)`` in 1/Å, ``u² = |s|²`` and the angle ``α = atan2(sy, sx)``:

* electron wavelength (relativistic), ``V`` in volts::

      λ = 12.2643247 / sqrt(V · (1 + V · 0.978466e-6))   [Å]

* ``K1 = π λ``, ``K2 = π/2 · Cs · λ³`` (Cs in Å), ``K3 = atan(Q0 / sqrt(1 - Q0²))``,
  ``K4 = -B / 4``, ``K5 = phase shift`` in radians;
* astigmatic defocus along ``α`` (RELION's signs: positive U/V mean underfocus)::

      Δf(α) = -(U + V)/2 - (U - V)/2 · cos(2 (α - θ_ast))

* ``γ = K1 · Δf(α) · u² + K2 · u⁴ - K5 - K3`` and ``CTF = scale · (-sin γ) · exp(K4 · u²)``.

Sign: for underfocus (positive U, V) the CTF is positive at low frequency
(``-sin γ ≈ sin(K1 |Δf| u² + K3) > 0``), as in RELION, whose particle images show protein
white (contrast inverted relative to the raw micrograph).

Frequencies of a ``D``-pixel grid sampled at ``apix`` Å/px are ``k / (D · apix)`` for the
integer frequency index ``k`` of the centred layout (:mod:`cryovox.core.fft`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["electron_wavelength", "compute_ctf", "ctf_at", "ctf_1d", "ctf_first_zero"]


def electron_wavelength(voltage_kv) -> Tensor | float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (RELION's formula)."""
    if isinstance(voltage_kv, Tensor):
        v = voltage_kv * 1e3
        return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))
    v = float(voltage_kv) * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + v * 0.978466e-6))


def _result_dtype(values, dtype) -> torch.dtype:
    if dtype is not None:
        return dtype
    for v in values:
        if isinstance(v, Tensor) and v.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _result_device(values, device):
    if device is not None:
        return torch.device(device)
    for v in values:
        if isinstance(v, Tensor):
            return v.device
    return torch.device("cpu")


def ctf_at(sx: Tensor, sy: Tensor, defocus_u, defocus_v, defocus_angle, voltage, cs,
           amplitude_contrast, phase_shift=0.0, bfactor=0.0, scale=1.0) -> Tensor:
    """CTF at arbitrary spatial frequencies.

    sx, sy: frequency components in 1/Å (x, y). The CTF parameters are tensors or numbers that
    broadcast against ``sx``/``sy`` (e.g. shape ``(B, 1, 1)`` against ``(D, D)``). Units: defocus
    in Å (positive = underfocus), astigmatism angle in degrees (from the x axis to U), voltage
    in kV, Cs in mm, amplitude contrast as a fraction, phase shift in degrees, B-factor in Å².
    Computation happens in the dtype of ``sx`` (use float64 for exact comparisons).
    """
    dt, dev = sx.dtype, sx.device

    def t(v):
        return torch.as_tensor(v, dtype=dt, device=dev)

    du, dv, ang = t(defocus_u), t(defocus_v), t(defocus_angle)
    volt, cs_, q0, ps, b, sc = t(voltage), t(cs), t(amplitude_contrast), t(phase_shift), t(bfactor), t(scale)
    if bool(((q0 < 0) | (q0 > 1)).any()):
        raise ValueError("amplitude contrast must lie in [0, 1]")
    lam = electron_wavelength(volt)
    k1 = math.pi * lam                                  # π/2 · 2 · λ
    k2 = (math.pi / 2) * (cs_ * 1e7) * lam ** 3         # Cs: mm → Å
    k3 = torch.atan(q0 / torch.sqrt(1 - q0 * q0))
    k4 = -b / 4.0
    k5 = torch.deg2rad(ps)
    u2 = sx * sx + sy * sy
    alpha = torch.atan2(sy, sx) - torch.deg2rad(ang)
    deltaf = -(du + dv) * 0.5 - (du - dv) * 0.5 * torch.cos(2 * alpha)
    gamma = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
    return sc * (-torch.sin(gamma)) * torch.exp(k4 * u2)


def _as_batch(v, dtype, device) -> Tensor:
    return torch.as_tensor(v, dtype=dtype, device=device).reshape(-1)


def compute_ctf(size: int, apix, defocus_u, defocus_v, defocus_angle, voltage, cs,
                amplitude_contrast, phase_shift=0.0, bfactor=0.0, *, half: bool = True,
                scale=1.0, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """CTF images on the Fourier grid of ``size``-pixel images, one per parameter set.

    Parameters are numbers or tensors of shape ``(B,)`` (broadcast together; scalars give
    ``B = 1``); ``apix`` (Å/px) may be per image too. Units as in :func:`ctf_at`.

    Returns ``(B, D, D // 2 + 1)`` in the :func:`cryovox.core.fft.rfftn_c` layout when
    ``half`` (row ``i`` ↔ ``ky = i - D // 2``, column ``j`` ↔ ``kx = j``), else ``(B, D, D)``
    in the :func:`cryovox.core.fft.fftn_c` layout (``kx = j - D // 2``). The frequency of
    index ``k`` is ``k / (D · apix)`` 1/Å. dtype: float64 if any parameter tensor is
    float64, else float32 (or ``dtype``); device: that of the parameter tensors (or ``device``).
    """
    values = (apix, defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast,
              phase_shift, bfactor, scale)
    dt = _result_dtype(values, dtype)
    dev = _result_device(values, device)
    # evaluate in float64 and cast: float32 loses digits in K1 Δf u² (≈ 10² rad at 3 Å)
    work = torch.float64 if dev.type != "mps" else torch.float32
    params = torch.broadcast_tensors(*(_as_batch(v, work, dev) for v in values))
    params = [p.reshape(-1, 1, 1) for p in params]
    ap = params[0]
    ky = torch.arange(size, dtype=work, device=dev) - size // 2
    kx = torch.arange(size // 2 + 1, dtype=work, device=dev) if half else ky
    sy = ky[None, :, None] / (size * ap)
    sx = kx[None, None, :] / (size * ap)
    sx, sy = torch.broadcast_tensors(sx, sy)
    out = ctf_at(sx, sy, *params[1:9], scale=params[9])
    return out.to(dt)


def ctf_1d(freqs: Tensor, defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast,
           phase_shift=0.0, bfactor=0.0, *, direction: float | None = None, scale=1.0) -> Tensor:
    """Radial CTF profile along one direction.

    freqs: ``(N,)`` spatial frequencies in 1/Å. ``direction`` is the angle (degrees, from x) of
    the line; ``None`` means along the defocus-U axis (so the profile uses defocus U only).
    Parameters are numbers or ``(B,)`` tensors; returns ``(B, N)`` in the dtype of ``freqs``.
    """
    dt, dev = freqs.dtype, freqs.device
    params = torch.broadcast_tensors(*(_as_batch(v, dt, dev) for v in (
        defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift, bfactor, scale)))
    params = [p.reshape(-1, 1) for p in params]
    theta = torch.deg2rad(params[2]) if direction is None else torch.deg2rad(torch.as_tensor(direction, dtype=dt, device=dev))
    sx = freqs[None, :] * torch.cos(theta)
    sy = freqs[None, :] * torch.sin(theta)
    sx, sy = torch.broadcast_tensors(sx, sy)
    return ctf_at(sx, sy, *params[:8], scale=params[8])


def ctf_first_zero(defocus: float, voltage: float, cs: float = 0.0, amplitude_contrast: float = 0.0,
                   phase_shift: float = 0.0) -> float:
    """Spatial frequency (1/Å) of the first zero of an isotropic CTF (defocus in Å, > 0).

    Solves ``γ(u) = -nπ`` for the first multiple of π below ``γ(0) = -K3 - K5`` (``n = 1`` without
    phase plate), i.e. ``K2 u⁴ - π λ Δf u² + (nπ - K3 - K5) = 0`` for ``u²`` (the smaller root).
    With ``Cs = Q0 = 0`` this is ``u = 1 / sqrt(λ Δf)``.
    """
    lam = electron_wavelength(voltage)
    k1 = math.pi * lam
    k2 = (math.pi / 2) * cs * 1e7 * lam ** 3
    k3 = math.atan(amplitude_contrast / math.sqrt(1 - amplitude_contrast ** 2))
    start = k3 + math.radians(phase_shift)            # γ(0) = -start; γ decreases with u
    c = math.pi * (math.floor(start / math.pi) + 1) - start
    # k2 x² - k1 Δf x + c = 0, x = u²
    if k2 == 0.0:
        x = c / (k1 * defocus)
    else:
        disc = (k1 * defocus) ** 2 - 4 * k2 * c
        if disc < 0:
            raise ValueError("the CTF has no zero for these parameters")
        x = (k1 * defocus - math.sqrt(disc)) / (2 * k2)
    return math.sqrt(x)
