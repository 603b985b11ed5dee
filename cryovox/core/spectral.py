"""Fourier shells, radial averages and Fourier-space resampling (crop / pad).

Shells: the shell of a Fourier sample is its distance from the DC term in cycles per box
(frequency index units), rounded to the nearest integer: shell ``i`` holds ``i - ½ ≤ |k| < i + ½``
(no sample lies exactly on a half-integer radius). Shells ``0`` (DC) … ``D // 2`` (Nyquist) are
kept; the corners of the cube beyond Nyquist are left out of every shell statistic. Shell ``i``
corresponds to the spatial frequency ``i / (D · apix)`` 1/Å, i.e. the resolution ``D · apix / i`` Å.

Half (rfft) layouts (:func:`cryovox.core.fft.rfftn_c`) store only ``kx ≥ 0``. Sums over a half
layout are weighted by :func:`hermitian_weights` (2 for the columns whose mirror ``-kx`` is not
stored, 1 for ``kx = 0`` and for an even box's Nyquist column), which makes them equal to sums
over the full transform for any Hermitian-symmetric quantity such as ``|F|²`` or ``Re(F1 F2*)``.

Resampling keeps the real-space origin at index ``D // 2`` (it maps to ``d // 2``) and the
amplitude scale of the samples (a constant map stays the same constant).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from cryovox.core.fft import fftn_c, ifftn_c

__all__ = [
    "shell_index", "hermitian_weights", "shell_sum", "shell_counts", "radial_average",
    "fourier_crop", "fourier_pad", "fourier_resize", "resample", "downsample_images",
    "shell_resolution",
]


@functools.lru_cache(maxsize=32)
def _shell_index_cached(size: int, ndim: int, half: bool, device: str) -> Tensor:
    dev = torch.device(device)
    k = torch.arange(size, device=dev, dtype=torch.float64) - size // 2
    last = torch.arange(size // 2 + 1, device=dev, dtype=torch.float64) if half else k
    axes = [k] * (ndim - 1) + [last]
    r2 = torch.zeros((), dtype=torch.float64, device=dev)
    for i, a in enumerate(axes):
        shape = [1] * ndim
        shape[i] = a.numel()
        r2 = r2 + a.reshape(shape) ** 2
    return torch.round(torch.sqrt(r2)).to(torch.long)


def shell_index(size: int, ndim: int, *, half: bool = False, device=None) -> Tensor:
    """Rounded radius (int64) of every Fourier sample of a ``size``-box in the centred layout.

    Returns ``(D,) * ndim`` (full, :func:`~cryovox.core.fft.fftn_c` layout) or
    ``(D,) * (ndim - 1) + (D // 2 + 1,)`` with ``half``. Values may exceed ``D // 2`` in the
    corners. The returned tensor is cached: do not modify it in place.
    """
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, not {ndim}")
    return _shell_index_cached(int(size), int(ndim), bool(half), str(torch.device(device or "cpu")))


def hermitian_weights(size: int, *, device=None, dtype=torch.float64) -> Tensor:
    """Multiplicity ``(D // 2 + 1,)`` of the half-layout columns ``kx = 0 … D // 2``.

    ``2`` where the mirror column ``-kx`` is not stored, ``1`` for ``kx = 0`` and, for even
    ``D``, for the Nyquist column (the full centred grid holds it once, as ``kx = -D/2``).
    """
    w = torch.full((size // 2 + 1,), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if size % 2 == 0:
        w[-1] = 1.0
    return w


def _size_of(x: Tensor, ndim: int, half: bool) -> int:
    return x.shape[-2] if (half and ndim > 1) else (2 * (x.shape[-1] - 1) if half else x.shape[-1])


def shell_sum(x: Tensor, *, ndim: int, half: bool = False, size: int | None = None) -> Tensor:
    """Sum of real values per shell: ``(..., D, …) → (..., D // 2 + 1)`` (float64).

    ``x`` is in the centred full layout, or the half layout with ``half`` (sums then weighted by
    :func:`hermitian_weights`, i.e. equal to full-layout sums of a Hermitian quantity).
    ``size`` is needed only for 1D half layouts of odd boxes.
    """
    if x.is_complex():
        raise TypeError("shell_sum expects real values (take .real, .abs() or |F|² first)")
    D = size if size is not None else _size_of(x, ndim, half)
    n = D // 2 + 1
    idx = shell_index(D, ndim, half=half, device=x.device)
    if tuple(x.shape[-ndim:]) != tuple(idx.shape):
        raise ValueError(f"expected trailing shape {tuple(idx.shape)} for box {D}, got {tuple(x.shape[-ndim:])}")
    vals = x.to(torch.float64)
    if half:
        vals = vals * hermitian_weights(D, device=x.device)
    batch = vals.shape[:-ndim]
    flat = vals.reshape(*batch, -1)
    idx = idx.reshape(-1).clamp(max=n)          # corners → a discarded extra bin
    out = torch.zeros(*batch, n + 1, dtype=torch.float64, device=x.device)
    out.index_add_(-1, idx, flat)
    return out[..., :n]


def shell_counts(size: int, ndim: int, *, device=None) -> Tensor:
    """Number of samples of the full centred grid in each shell ``0 … D // 2`` (float64)."""
    idx = shell_index(size, ndim, device=device).reshape(-1).clamp(max=size // 2 + 1)
    return torch.bincount(idx, minlength=size // 2 + 2)[: size // 2 + 1].to(torch.float64)


def radial_average(x: Tensor, *, ndim: int, half: bool = False) -> Tensor:
    """Mean of ``x`` over each shell: ``(..., D, …) → (..., D // 2 + 1)`` float64.

    ``x`` real, in the centred full layout or (``half``) the rfft layout; the half-layout mean
    equals the full-layout mean of a Hermitian-symmetric quantity (see module docstring).
    """
    D = _size_of(x, ndim, half)
    return shell_sum(x, ndim=ndim, half=half) / shell_counts(D, ndim, device=x.device)


def shell_resolution(size: int, apix: float) -> Tensor:
    """Resolution in Å of shells ``0 … D // 2``: ``D · apix / i`` (``inf`` for the DC shell)."""
    i = torch.arange(size // 2 + 1, dtype=torch.float64)
    return torch.where(i > 0, size * apix / i.clamp(min=1), torch.full_like(i, float("inf")))


def _resize_spectrum(F: Tensor, new_size: int, ndim: int) -> Tensor:
    """Centre-crop or zero-pad the last ``ndim`` axes of a centred full spectrum to ``new_size``."""
    for ax in range(-ndim, 0):
        old = F.shape[ax]
        if new_size < old:
            start = old // 2 - new_size // 2
            G = F.narrow(ax, start, new_size).clone()
            if new_size % 2 == 0:
                # even target: its Nyquist sample (index 0, k = -d/2) receives both k = ±d/2
                G.select(ax, 0).add_(F.select(ax, old // 2 + new_size // 2))
            F = G
        elif new_size > old:
            before = new_size // 2 - old // 2
            shape = list(F.shape)
            shape[ax] = new_size
            G = torch.zeros(shape, dtype=F.dtype, device=F.device)
            G.narrow(ax, before, old).copy_(F)
            F = G
    return F


def fourier_resize(x: Tensor, new_size: int, ndim: int) -> Tensor:
    """Resample real ``(..., D, …)`` data to ``(..., d, …)`` by cropping or zero-padding its spectrum.

    The centred spectrum is cut to (or padded with zeros around) the central ``d`` samples on
    each of the last ``ndim`` axes, inverted, and scaled by ``(d / D) ** ndim`` so sample values
    keep their scale. This equals band-limited (trigonometric) interpolation of the input
    resampled on the new grid, after an ideal low-pass at the new Nyquist frequency:

    * components beyond the new Nyquist (``|k| > d/2`` on an axis) are dropped, nothing aliases;
    * cropping to an even ``d`` adds the ``k = +d/2`` plane into the stored ``k = -d/2`` one
      (both sample as ``(-1)^n`` on the new grid);
    * padding from an even ``D`` splits its ``k = -D/2`` plane evenly between ``±D/2`` (the real
      part of the inverse transform does this), so ``fourier_crop(fourier_pad(x, d), D) == x``.
    """
    D = x.shape[-1]
    if any(s != D for s in x.shape[-ndim:]):
        raise ValueError(f"expected a cubic/square box on the last {ndim} axes, got {tuple(x.shape[-ndim:])}")
    if new_size < 1:
        raise ValueError(f"new size must be positive, got {new_size}")
    if new_size == D:
        return x.clone()
    F = _resize_spectrum(fftn_c(x, ndim), new_size, ndim)
    y = ifftn_c(F, ndim).real * (new_size / D) ** ndim
    return y.to(x.dtype) if not x.is_complex() else y


def fourier_crop(x: Tensor, new_size: int, ndim: int) -> Tensor:
    """Downsample real images/volumes ``(..., D, …) → (..., d, …)``, ``d ≤ D`` (see :func:`fourier_resize`)."""
    if new_size > x.shape[-1]:
        raise ValueError(f"fourier_crop: new size {new_size} is larger than the box {x.shape[-1]}")
    return fourier_resize(x, new_size, ndim)


def fourier_pad(x: Tensor, new_size: int, ndim: int) -> Tensor:
    """Upsample real images/volumes ``(..., D, …) → (..., d, …)``, ``d ≥ D`` (see :func:`fourier_resize`)."""
    if new_size < x.shape[-1]:
        raise ValueError(f"fourier_pad: new size {new_size} is smaller than the box {x.shape[-1]}")
    return fourier_resize(x, new_size, ndim)


def resample(x: Tensor, apix_in: float, apix_out: float, ndim: int) -> tuple[Tensor, float]:
    """Change the pixel size of real images/volumes by Fourier crop or pad.

    The new box is ``d = round(D · apix_in / apix_out)`` (the physical box size is kept); since
    ``d`` is an integer, the pixel size actually reached, ``D · apix_in / d``, is returned too.
    Returns ``(y (..., d, …), apix_actual)``.
    """
    D = x.shape[-1]
    d = max(1, int(round(D * apix_in / apix_out)))
    return fourier_resize(x, d, ndim), D * apix_in / d


def downsample_images(images: Tensor, new_size: int) -> Tensor:
    """Downsample a stack ``(B, D, D) → (B, d, d)`` by Fourier cropping, each image on its own.

    Only 2D transforms over the last two axes are used, so an image's result never depends on
    the other images of the stack (cryoDRGN 4.3.1's ``phase_flip`` mixed them with a 3D FFT).
    """
    if images.ndim < 2 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images (..., D, D), got {tuple(images.shape)}")
    return fourier_crop(images, new_size, 2)
