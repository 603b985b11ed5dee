"""Centred Fourier transforms (see docs/conventions.md).

The real-space origin is the sample at index ``D // 2`` and so is the DC term of the
transform: ``fftn_c(x) = fftshift(fftn(ifftshift(x)))``. Forward transforms are
unnormalised, inverse ones divide by the number of samples (numpy's default).
Half transforms (``rfftn_c``) keep ``x >= 0`` along the last axis, centred on the others.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _dims(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def fftn_c(x: Tensor, ndim: int = 3) -> Tensor:
    """Centred FFT over the last ``ndim`` axes (real or complex input)."""
    d = _dims(ndim)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d), dim=d)


def ifftn_c(x: Tensor, ndim: int = 3) -> Tensor:
    """Inverse of :func:`fftn_c` (complex output)."""
    d = _dims(ndim)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=d), dim=d), dim=d)


def fft2_c(x: Tensor) -> Tensor:
    """Centred 2D FFT of images ``(..., D, D)``."""
    return fftn_c(x, 2)


def ifft2_c(x: Tensor) -> Tensor:
    return ifftn_c(x, 2)


def fft3_c(x: Tensor) -> Tensor:
    """Centred 3D FFT of volumes ``(..., D, D, D)``."""
    return fftn_c(x, 3)


def ifft3_c(x: Tensor) -> Tensor:
    return ifftn_c(x, 3)


def rfftn_c(x: Tensor, ndim: int = 3) -> Tensor:
    """Centred half transform of a real array: shape ``(..., D, ..., D // 2 + 1)``.

    Column ``j`` holds frequency ``x = j``; it equals ``fftn_c(x)[..., D // 2 + j]`` for
    ``j < (D + 1) // 2``; for even ``D`` the last column is the Nyquist ``x = D / 2``
    (stored by the full centred transform at index 0 as ``x = -D / 2``).
    """
    d = _dims(ndim)
    y = torch.fft.rfftn(torch.fft.ifftshift(x, dim=d), dim=d)
    return torch.fft.fftshift(y, dim=d[:-1]) if ndim > 1 else y


def irfftn_c(y: Tensor, size: int, ndim: int = 3) -> Tensor:
    """Inverse of :func:`rfftn_c`; ``size`` is the real length of the last axis."""
    d = _dims(ndim)
    if ndim > 1:
        y = torch.fft.ifftshift(y, dim=d[:-1])
    shape = [y.shape[i] for i in d[:-1]] + [size]
    return torch.fft.fftshift(torch.fft.irfftn(y, s=shape, dim=d), dim=d)


def freq_grid(size: int, ndim: int, device=None, dtype=torch.float32) -> Tensor:
    """Integer frequency coordinates (cycles per box) of a centred grid.

    Returns ``(D,)*ndim + (ndim,)`` with the last axis ordered ``(x, y[, z])``: the vector
    convention, the reverse of the array axes.
    """
    k = torch.arange(size, device=device, dtype=dtype) - size // 2
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")  # axes (.., y, x)
    return torch.stack(grids[::-1], dim=-1)


def radius_grid(size: int, ndim: int, device=None, dtype=torch.float32) -> Tensor:
    """Distance (in voxels / cycles per box) of each sample from index ``D // 2``."""
    return freq_grid(size, ndim, device, dtype).norm(dim=-1)


def phase_ramp_2d(shifts: Tensor, size: int, half: bool = False) -> Tensor:
    """Phase factors that translate images by ``shifts`` pixels, ``(B, 2)`` as ``(x, y)``.

    Multiplying a centred transform by the result translates the image by ``+shift``
    (content at ``r`` moves to ``r + shift``): ``exp(-2πi k·s / D)``. With ``half`` the
    result matches the :func:`rfftn_c` layout ``(B, D, D // 2 + 1)``, else ``(B, D, D)``.
    """
    ky = torch.arange(size, device=shifts.device, dtype=shifts.dtype) - size // 2
    kx = torch.arange(size // 2 + 1, device=shifts.device, dtype=shifts.dtype) if half else ky
    phase = -2 * torch.pi * (kx[None, None, :] * shifts[:, 0, None, None]
                             + ky[None, :, None] * shifts[:, 1, None, None]) / size
    return torch.polar(torch.ones_like(phase), phase)


def shift_images(images: Tensor, shifts: Tensor) -> Tensor:
    """Translate real images ``(B, D, D)`` by sub-pixel ``shifts`` ``(B, 2)`` (x, y) in pixels (periodic)."""
    D = images.shape[-1]
    f = rfftn_c(images, 2) * phase_ramp_2d(shifts.to(images.dtype), D, half=True)
    return irfftn_c(f, D, 2)
