"""Degradation operators of density maps, their adjoints and pseudo-inverses (for posterior sampling).

Fourier conventions are those of :mod:`cryovox.core.fft` (centred, unnormalised forward
transforms). Noise *power* means ``E|N_k|²`` of the centred transform ``fftn_c(n)`` of a real
noise map ``n`` ``(D, D, D)``: white noise of variance ``s²`` per voxel has power ``D³·s²`` at every
``k``. Powers are real ``(D, D, D)`` arrays in the full centred layout, symmetric under
``k → −k`` (so the noise maps are real).

Operators:

- spectral / anisotropic noise ``y = x + n`` (the operator is the identity, its own adjoint and
  inverse): :func:`add_noise`, :func:`gaussian_nll`, :func:`radial_power_grid`,
  :func:`cone_mask`, :func:`amplify_power`;
- missing wedge ``y = F⁻¹(M · F x)`` with the tilt-series mask ``M`` of :func:`wedge_mask`: an
  orthogonal projector (self-adjoint, idempotent, its own pseudo-inverse): :func:`apply_fourier_mask`;
  :func:`wedge_fill` puts the measured part back into an estimate (CryoFM Alg. 2);
- projection ``y_i = T(s_i)·P(R_i) x`` (Fourier-slice projection through
  :mod:`cryovox.core.slicing`, then an in-plane shift): :func:`project_maps`, its exact adjoint
  :func:`project_adjoint`, and a Wiener-regularised pseudo-inverse :func:`project_pinv`
  (direct Fourier inversion from images at known poses).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cryovox.core.fft import fftn_c, freq_grid, ifftn_c, irfftn_c, phase_ramp_2d, rfftn_c
from cryovox.core.slicing import backproject, fourier_to_volume, gridding_correction, project_volume, \
    volume_to_fourier
from cryovox.core.spectral import hermitian_weights

__all__ = [
    "radial_power_grid", "add_noise", "gaussian_nll", "cone_mask", "amplify_power",
    "wedge_mask", "apply_fourier_mask", "wedge_fill",
    "project_maps", "project_adjoint", "project_pinv",
]


# ---------------------------------------------------------------------------------------------
# spectral and anisotropic noise


def radial_power_grid(radial: Tensor, size: int, *, source_size: int | None = None, device=None,
                      dtype=torch.float32) -> Tensor:
    """Expand a per-shell noise power to a full centred grid ``(D, D, D)`` (linear in radius).

    radial: ``(n,)`` power of shells ``0 … n−1`` measured on a box of ``source_size`` (default
    ``size``). For another box the profile is read at the same spatial frequency
    (``|k| · source_size / size``) and rescaled by ``(size / source_size)³`` (a stationary noise's
    power per Fourier sample grows with the number of voxels). Radii beyond the last shell get
    the last value.
    """
    src = size if source_size is None else source_size
    radial = torch.as_tensor(radial, dtype=torch.float64, device=device)
    r = freq_grid(size, 3, device=device, dtype=torch.float64).norm(dim=-1) * (src / size)
    n = radial.numel()
    r = r.clamp(max=n - 1)
    i0 = r.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    f = r - i0
    out = radial[i0] * (1 - f) + radial[i1] * f
    return (out * (size / src) ** 3).to(dtype)


def add_noise(x: Tensor, power: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x + n`` with real Gaussian noise ``n`` of Fourier power ``power`` (``E|fftn_c(n)_k|² = power_k``).

    x: ``(..., D, D, D)`` real; power: ``(D, D, D)`` (broadcast), symmetric under ``k → −k``.
    Noise is drawn on the CPU (from ``generator``) so results do not depend on the device.
    """
    D = x.shape[-1]
    w = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    n = ifftn_c(fftn_c(w) * torch.sqrt(power.to(torch.float64) / D ** 3)).real
    return x + n.to(x.dtype)


def gaussian_nll(x: Tensor, y: Tensor, power: Tensor, fourier_mask: Tensor | None = None) -> Tensor:
    """Negative log-likelihood (up to a constant) of ``y = x + n`` for Fourier-diagonal noise.

    ``Σ_k w_k |X_k − Y_k|² / power_k`` over the full centred transform, summed over the last three
    axes: x, y ``(..., D, D, D)``; power ``(D, D, D)``; ``fourier_mask`` (optional, ``(D, D, D)``
    weights in [0, 1]) restricts the sum, e.g. to the measured part of a missing-wedge map.
    Each Hermitian pair is counted twice (a constant factor). Returns ``(...)``.
    """
    r = fftn_c(x - y)
    w = 1.0 / power.clamp_min(torch.finfo(power.dtype).tiny)
    if fourier_mask is not None:
        w = w * fourier_mask
    return ((r.real ** 2 + r.imag ** 2) * w).sum(dim=(-3, -2, -1))


def _unit_axis(axis: str | Tensor | tuple[float, float, float]) -> Tensor:
    if isinstance(axis, str):
        vec = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}.get(axis.lower())
        if vec is None:
            raise ValueError(f"axis must be x, y or z, not {axis!r}")
        axis = vec
    a = torch.as_tensor(axis, dtype=torch.float64)
    return a / a.norm()


def cone_mask(size: int, half_angle: float, axis: str | tuple[float, float, float] = "z", *,
              device=None) -> Tensor:
    """Boolean ``(D, D, D)``: Fourier samples within ``half_angle`` degrees of ``±axis`` (DC included).

    axis: ``x``, ``y``, ``z`` or a vector ``(x, y, z)``. Symmetric under ``k → −k``.
    """
    k = freq_grid(size, 3, device=device, dtype=torch.float64)
    r = k.norm(dim=-1)
    c = (k @ _unit_axis(axis).to(k.device)).abs() / r.clamp_min(1e-12)
    return (c >= math.cos(math.radians(half_angle))) | (r == 0)


def amplify_power(power: Tensor, region: Tensor, factor: float) -> Tensor:
    """Noise power multiplied by ``factor`` inside the boolean ``region`` (e.g. a :func:`cone_mask`)."""
    return torch.where(region, power * factor, power)


# ---------------------------------------------------------------------------------------------
# missing wedge


def wedge_mask(size: int, tilt_range: tuple[float, float] = (-60.0, 60.0), tilt_axis: str = "y", *,
               device=None) -> Tensor:
    """Boolean ``(D, D, D)`` mask of the Fourier samples measured by a single-axis tilt series.

    The beam is along z at zero tilt; tilting about ``tilt_axis`` (``y`` or ``x``) by θ measures
    the central plane containing the tilt axis that makes the angle θ with the plane ``kz = 0``.
    A sample ``k`` is measured when its elevation ``α = atan(kz / k⊥)`` (``k⊥`` the component
    perpendicular to both the tilt axis and z, i.e. ``kx`` for a y axis, ``ky`` for an x axis),
    taken in (−90°, 90°], lies in ``[θ_min, θ_max]``. Points on the tilt axis (and DC) are always
    measured. The mask is symmetric under ``k → −k``. For ±60° a third of Fourier space is missing.
    """
    lo, hi = float(tilt_range[0]), float(tilt_range[1])
    if not -90.0 <= lo <= hi <= 90.0:
        raise ValueError(f"tilt range must satisfy -90 ≤ min ≤ max ≤ 90, got {lo}, {hi}")
    k = freq_grid(size, 3, device=device, dtype=torch.float64)
    kz = k[..., 2]
    if tilt_axis.lower() == "y":
        kp = k[..., 0]
    elif tilt_axis.lower() == "x":
        kp = k[..., 1]
    else:
        raise ValueError(f"tilt axis must be x or y, not {tilt_axis!r}")
    # fold (kp, kz) ↦ the half-plane kp > 0 (or kp = 0, kz ≥ 0): α ∈ (−90°, 90°]
    sign = torch.where((kp < 0) | ((kp == 0) & (kz < 0)), -1.0, 1.0).to(k.dtype)
    alpha = torch.rad2deg(torch.atan2(kz * sign, kp * sign))
    on_axis = (kp == 0) & (kz == 0)
    return ((alpha >= lo - 1e-9) & (alpha <= hi + 1e-9)) | on_axis


def apply_fourier_mask(x: Tensor, mask: Tensor) -> Tensor:
    """``F⁻¹(M · F x)`` for real maps ``(..., D, D, D)`` and a mask ``(D, D, D)`` symmetric under ``k → −k``.

    For a 0/1 mask this is an orthogonal projector: self-adjoint and idempotent, hence its own
    adjoint and Moore–Penrose pseudo-inverse.
    """
    return ifftn_c(fftn_c(x) * mask.to(x.dtype)).real


def wedge_fill(estimate: Tensor, observed: Tensor, mask: Tensor) -> Tensor:
    """Replace the measured Fourier part of ``estimate`` by the observation (CryoFM Alg. 2).

    ``F⁻¹(M·F(observed) + (1 − M)·F(estimate))`` = ``estimate + A⁺(observed − A·estimate)`` for the
    projector ``A`` of :func:`apply_fourier_mask`. estimate ``(..., D, D, D)``, observed broadcastable.
    """
    m = mask.to(estimate.dtype)
    return ifftn_c(fftn_c(observed) * m + fftn_c(estimate) * (1 - m)).real


# ---------------------------------------------------------------------------------------------
# projection


def _image_phase(shifts: Tensor | None, n: int, size: int, dtype, device) -> Tensor | None:
    if shifts is None:
        return None
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must be ({n}, 2) pixels (x, y), got {tuple(shifts.shape)}")
    return phase_ramp_2d(shifts.to(device=device, dtype=dtype), size, half=True)


def project_maps(vol: Tensor, rot: Tensor, shifts: Tensor | None = None, *, pad: int = 2) -> Tensor:
    """Projection images ``(B, D, D)`` of a real map ``(D, D, D)`` at poses ``rot`` ``(B, 3, 3)``.

    Image ``i`` is ``P(x, y) = ∫ V(Rᵢᵀ (x, y, z)ᵀ) dz`` (docs/conventions.md) computed by
    Fourier-slice interpolation (:func:`cryovox.core.slicing.project_volume` on the ``pad``-times
    zero-padded, gridding-corrected transform), translated by ``shifts`` ``(B, 2)`` pixels (x, y)
    (content moves by ``+shift``). Differentiable in ``vol``.
    """
    D = vol.shape[-1]
    V = volume_to_fourier(vol, pad=pad)
    S = project_volume(V, rot.to(vol.dtype), pad=pad)
    ph = _image_phase(shifts, rot.shape[0], D, vol.dtype, vol.device)
    if ph is not None:
        S = S * ph
    return irfftn_c(S, D, 2)


def project_adjoint(images: Tensor, rot: Tensor, shifts: Tensor | None = None, *, pad: int = 2) -> Tensor:
    """The exact adjoint of :func:`project_maps` for the real inner products ``Σ x·y``: ``(B, D, D) → (D, D, D)``.

    ``⟨project_maps(x), y⟩ = ⟨x, project_adjoint(y)⟩`` for all real x, y. Built from the adjoint
    of each stage: ``irfftn`` (Hermitian weights / D²), the shift phase (its conjugate), the
    slice (:func:`cryovox.core.slicing.backproject`), ``rfftn`` of the padded map and the
    gridding division (crop, divide).
    """
    B, D = images.shape[0], images.shape[-1]
    dtype = images.dtype
    Y = rfftn_c(images, 2) * hermitian_weights(D, device=images.device, dtype=dtype) / D ** 2
    ph = _image_phase(shifts, B, D, dtype, images.device)
    if ph is not None:
        Y = Y * ph.conj()
    data, _ = backproject(Y, rot.to(dtype), pad=pad)
    P = pad * D
    big = irfftn_c(data / hermitian_weights(P, device=images.device, dtype=dtype), P, 3) * P ** 3
    o = P // 2 - D // 2
    vol = big[o:o + D, o:o + D, o:o + D]
    return vol / gridding_correction(D, pad, 3, dtype=dtype, device=images.device)


def project_pinv(images: Tensor, rot: Tensor, shifts: Tensor | None = None, *, pad: int = 2,
                 wiener: float = 1e-3) -> Tensor:
    """Regularised pseudo-inverse of :func:`project_maps`: direct Fourier inversion ``(B, D, D) → (D, D, D)``.

    Backprojects the (un-shifted) image transforms and divides by the backprojected sampling
    weights plus ``wiener`` (relative to the mean weight where sampled); a Fourier voxel that no
    image reaches stays 0. For noise-free, band-limited data at enough poses it returns the map.
    """
    B, D = images.shape[0], images.shape[-1]
    dtype = images.dtype
    Y = rfftn_c(images, 2)
    ph = _image_phase(shifts, B, D, dtype, images.device)
    if ph is not None:
        Y = Y * ph.conj()
    data, weight = backproject(Y, rot.to(dtype), pad=pad)
    eps = wiener * float(weight[weight > 0].mean()) if (weight > 0).any() else 1.0
    return fourier_to_volume(data / (weight + eps), pad=pad)
