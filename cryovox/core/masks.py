"""Soft real-space masks: spherical, thresholded (like ``relion_mask_create``) and automatic.

Soft edges are raised cosines, RELION's shape: a voxel at distance ``d`` beyond the hard
region gets ``½ + ½ cos(π d / w)`` for ``0 < d ≤ w`` and 0 beyond (``w`` = soft-edge width).
Distances are Euclidean, in voxels. The mask's centre is the voxel at ``D // 2``.

The distance transforms of :func:`threshold_mask` run through SciPy on the CPU (exact
Euclidean distance transform, linear in the number of voxels); the result comes back on the
input's device and dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cryovox.core.fft import radius_grid
from cryovox.core.filters import lowpass

__all__ = ["spherical_mask", "threshold_mask", "auto_solvent_mask", "soft_edge"]


def soft_edge(distance: Tensor, width: float) -> Tensor:
    """Raised-cosine fall-off: 1 for ``distance ≤ 0``, 0 for ``distance ≥ width`` (hard if width = 0)."""
    if width <= 0:
        return (distance <= 0).to(distance.dtype)
    t = (distance / width).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def spherical_mask(size: int, radius: float, soft_edge_px: float = 0.0, ndim: int = 3, *,
                   device=None, dtype=torch.float32) -> Tensor:
    """Sphere (disc for ``ndim = 2``) of ``radius`` voxels centred at ``D // 2``: ``(D,) * ndim``.

    1 inside ``radius``, cosine edge over the next ``soft_edge_px`` voxels, 0 beyond.
    """
    r = radius_grid(size, ndim, device=device, dtype=torch.float64)
    return soft_edge(r - radius, soft_edge_px).to(dtype)


def _edt(outside: np.ndarray) -> np.ndarray:
    """Distance of every voxel to the nearest ``False`` voxel of ``outside`` (0 where ``outside`` is False)."""
    from scipy.ndimage import distance_transform_edt

    if not outside.any():
        return np.zeros(outside.shape)
    if outside.all():
        return np.full(outside.shape, np.inf)
    return distance_transform_edt(outside)


def threshold_mask(vol: Tensor, threshold: float, extend_px: float = 0.0, soft_edge_px: float = 0.0) -> Tensor:
    """Mask of a map: binary at ``vol ≥ threshold``, grown by ``extend_px``, then a soft edge.

    vol: ``(D, D, D)`` (or 2D) real map. ``extend_px > 0`` adds every voxel within that distance
    of the binary region (negative values erode it by that distance); ``soft_edge_px`` adds the
    raised-cosine edge measured from the grown region. This is what ``relion_mask_create
    --ini_threshold --extend_inimask --width_soft_edge`` does. Returns values in [0, 1],
    same shape, dtype and device as ``vol``.
    """
    binary = (vol >= threshold).detach().cpu().numpy()
    if not binary.any():
        raise ValueError(f"no voxel reaches the threshold {threshold:g}")
    if extend_px >= 0:
        core = _edt(~binary) <= extend_px
    else:
        core = _edt(binary) > -extend_px
    dist = torch.from_numpy(_edt(~core))
    return soft_edge(dist, soft_edge_px).to(device=vol.device, dtype=vol.dtype)


def auto_solvent_mask(vol: Tensor, apix: float, *, resolution: float = 15.0, fraction: float = 0.2,
                      extend_px: float | None = None, soft_edge_px: float | None = None) -> tuple[Tensor, float]:
    """A solvent mask chosen automatically from the map itself.

    The rule (documented for users):

    1. low-pass the map at ``resolution`` Å (default 15 Å) so noise and fine features do not
       fragment the mask;
    2. threshold at ``median + fraction · (max − median)`` of the filtered map (default
       ``fraction = 0.2``): the median is the solvent level when the particle occupies less
       than half of the box, and the fraction of the peak density is insensitive to the map's
       scale and offset;
    3. grow by ``extend_px`` (default ``ceil(3 Å / apix)``) and add a cosine edge of
       ``soft_edge_px`` (default ``ceil(6 Å / apix)``), as :func:`threshold_mask`.

    vol: ``(D, D, D)``; apix in Å/px. Returns ``(mask, threshold)`` with the threshold applied
    to the low-pass filtered map.
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must lie in (0, 1)")
    D = vol.shape[-1]
    filtered = lowpass(vol.to(torch.float64), apix, max(resolution, 2 * apix), ndim=vol.ndim)
    med = filtered.median().item()
    top = filtered.max().item()
    threshold = med + fraction * (top - med)
    ext = math.ceil(3.0 / apix) if extend_px is None else extend_px
    soft = math.ceil(6.0 / apix) if soft_edge_px is None else soft_edge_px
    if D < 2:
        raise ValueError("map too small for a mask")
    return threshold_mask(filtered, threshold, ext, soft).to(vol.dtype), threshold
