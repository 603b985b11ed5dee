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

    Equals ``fftn_c(x)[..., D // 2:]`` along the last axis for even and odd ``D``.
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
