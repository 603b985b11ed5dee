"""Voxel positional encoding (NeRF-style sin/cos features of the voxel coordinates).

Cryo-SWAN concatenates, to the density of every voxel, ``γ(p) = (sin(2^l π p), cos(2^l π p))``
for ``l = 0 … L-1`` and each coordinate of the voxel position ``p ∈ [-1, 1)³`` (L = 10 in the
paper), so the convolutional encoder knows where in the box a feature sits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def voxel_coordinates(size: int, device=None, dtype=torch.float32) -> Tensor:
    """Normalised voxel positions of a ``size³`` box.

    Returns ``(3, D, D, D)`` with channels ordered ``(x, y, z)`` (the vector convention) over the
    array axes ``[z, y, x]``; index ``i`` maps to ``(i - D // 2) / (D / 2)``, so the box centre
    (voxel ``D // 2``) is 0 and the range is ``[-1, 1)``.
    """
    k = (torch.arange(size, device=device, dtype=dtype) - size // 2) / (size / 2)
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack([x, y, z], dim=0)


def positional_encoding(size: int, levels: int = 10, device=None, dtype=torch.float32) -> Tensor:
    """Sin/cos encoding of the voxel coordinates of a ``size³`` box.

    Returns ``(6 * levels, D, D, D)``: for each level ``l`` (frequency ``2^l π``) the block
    ``[sin(x), sin(y), sin(z), cos(x), cos(y), cos(z)]`` of the scaled coordinates.
    ``levels = 0`` gives an empty ``(0, D, D, D)`` tensor (no encoding).
    """
    p = voxel_coordinates(size, device=device, dtype=torch.float64)
    feats = []
    for level in range(levels):
        arg = (2.0**level) * math.pi * p
        feats.append(torch.sin(arg))
        feats.append(torch.cos(arg))
    if not feats:
        return torch.zeros((0, size, size, size), device=device, dtype=dtype)
    return torch.cat(feats, dim=0).to(dtype)
