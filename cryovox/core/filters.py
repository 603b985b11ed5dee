"""Radial Fourier filters with cosine soft edges (low-pass, high-pass, band-pass).

Conventions follow RELION's ``lowPassFilterMap`` / ``highPassFilterMap``: the cut-off of a
filter at ``resolution`` Å sits at the frequency radius ``r_c = D · apix / resolution`` (in
Fourier pixels, cycles per box); a low-pass keeps everything up to ``r_c`` untouched and falls
to zero as ``½ + ½ cos(π (r - r_c) / w)`` over the next ``w = edge_width`` pixels; a high-pass
is zero up to ``r_c - w`` and rises the same way to one at ``r_c``. Radii are the exact
(unrounded) distance of each Fourier sample from DC. ``edge_width = 0`` gives a hard edge
(RELION's default width is 2 Fourier pixels, the default here too).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cryovox.core.fft import irfftn_c, rfftn_c

__all__ = ["radial_frequency", "lowpass_weights", "highpass_weights", "apply_radial_filter",
           "lowpass", "highpass", "bandpass"]


def radial_frequency(size: int, ndim: int, *, half: bool = True, device=None,
                     dtype=torch.float64) -> Tensor:
    """Distance of each Fourier sample from DC in Fourier pixels, centred full or half layout."""
    k = torch.arange(size, device=device, dtype=dtype) - size // 2
    last = torch.arange(size // 2 + 1, device=device, dtype=dtype) if half else k
    axes = [k] * (ndim - 1) + [last]
    r2 = torch.zeros((), device=device, dtype=dtype)
    for i, a in enumerate(axes):
        shape = [1] * ndim
        shape[i] = a.numel()
        r2 = r2 + a.reshape(shape) ** 2
    return torch.sqrt(r2)


def _cosine_fall(r: Tensor, start: float, width: float) -> Tensor:
    """1 for ``r <= start``, cosine to 0 at ``start + width``, 0 beyond."""
    if width <= 0:
        return (r <= start).to(r.dtype)
    t = ((r - start) / width).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def lowpass_weights(size: int, ndim: int, cutoff_px: float, edge_width: float = 2.0, *,
                    half: bool = True, device=None, dtype=torch.float64) -> Tensor:
    """Low-pass weights on a Fourier grid: 1 up to ``cutoff_px``, cosine to 0 at ``cutoff_px + edge_width``."""
    return _cosine_fall(radial_frequency(size, ndim, half=half, device=device, dtype=dtype), cutoff_px, edge_width)


def highpass_weights(size: int, ndim: int, cutoff_px: float, edge_width: float = 2.0, *,
                     half: bool = True, device=None, dtype=torch.float64) -> Tensor:
    """High-pass weights: 0 up to ``cutoff_px - edge_width``, cosine to 1 at ``cutoff_px``."""
    r = radial_frequency(size, ndim, half=half, device=device, dtype=dtype)
    return 1.0 - _cosine_fall(r, cutoff_px - edge_width, edge_width) if edge_width > 0 else (r >= cutoff_px).to(dtype)


def apply_radial_filter(x: Tensor, weights: Tensor, ndim: int) -> Tensor:
    """Multiply the spectrum of real ``x`` (..., D, …) by half-layout ``weights`` and return real data."""
    D = x.shape[-1]
    y = irfftn_c(rfftn_c(x, ndim) * weights.to(device=x.device, dtype=x.real.dtype), D, ndim)
    return y.to(x.dtype)


def _cutoff_px(size: int, apix: float, resolution: float) -> float:
    if resolution <= 0 or apix <= 0:
        raise ValueError("resolution and pixel size must be positive")
    return size * apix / resolution


def lowpass(x: Tensor, apix: float, resolution: float, *, ndim: int, edge_width: float = 2.0) -> Tensor:
    """Low-pass filter real images/volumes ``(..., D, …)`` at ``resolution`` Å (soft cosine edge).

    apix: Å/px; edge_width: width of the cosine edge in Fourier pixels beyond the cut-off.
    """
    w = lowpass_weights(x.shape[-1], ndim, _cutoff_px(x.shape[-1], apix, resolution), edge_width, device=x.device)
    return apply_radial_filter(x, w, ndim)


def highpass(x: Tensor, apix: float, resolution: float, *, ndim: int, edge_width: float = 2.0) -> Tensor:
    """Remove frequencies coarser than ``resolution`` Å (soft edge below the cut-off)."""
    w = highpass_weights(x.shape[-1], ndim, _cutoff_px(x.shape[-1], apix, resolution), edge_width, device=x.device)
    return apply_radial_filter(x, w, ndim)


def bandpass(x: Tensor, apix: float, low_resolution: float, high_resolution: float, *, ndim: int,
             edge_width: float = 2.0) -> Tensor:
    """Keep resolutions between ``low_resolution`` Å (coarse, e.g. 100) and ``high_resolution`` Å (fine, e.g. 5)."""
    if high_resolution >= low_resolution:
        raise ValueError("bandpass: high_resolution (Å) must be smaller than low_resolution (Å)")
    D = x.shape[-1]
    w = (highpass_weights(D, ndim, _cutoff_px(D, apix, low_resolution), edge_width, device=x.device)
         * lowpass_weights(D, ndim, _cutoff_px(D, apix, high_resolution), edge_width, device=x.device))
    return apply_radial_filter(x, w, ndim)
