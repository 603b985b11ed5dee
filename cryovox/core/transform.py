"""Geometric transforms of volumes: affine resampling (rotation, scaling), crops, flips.

Pure functions on tensors, following docs/conventions.md: volumes are indexed ``[z, y, x]``,
coordinate vectors are ``(x, y, z)``, and the origin (rotation centre) of an axis of length
``n`` is the voxel at index ``n // 2``.

Rotations act *actively* on the content: ``rotate(V, R)`` moves the density at position
``q`` (relative to the centre) to ``R q``, i.e. ``rotate(V, R)(p) = V(Rᵀ p)``. With a pose
matrix ``R`` in RELION's convention, summing ``rotate(V, R)`` along ``z`` gives the pose's
projection ``P(x, y) = ∫ V(Rᵀ (x, y, z)ᵀ) dz`` (see :mod:`cryovox.core.rotations`).

Interpolation: ``order=3`` is cubic B-spline interpolation (prefiltered, so it interpolates
the samples exactly), evaluated with eight trilinear fetches (Sigg & Hadwiger, GPU Gems 2,
ch. 20); ``order=1`` is trilinear and ``order=0`` nearest neighbour. Points outside the input
read zeros. The spline prefilter is periodic: inside the box the cubic interpolant is the
periodic spline through the samples, and outside it falls to zero within two voxels, which
is exact for volumes whose border is zero (masked maps).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "spline_prefilter",
    "affine_resample",
    "rotate",
    "center_crop_pad",
    "random_crop",
    "flip",
    "random_flip_axes",
]


def _as_size3(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (size, size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise ValueError(f"expected 3 sizes (z, y, x), got {size}")
    return size  # type: ignore[return-value]


def spline_prefilter(vol: Tensor) -> Tensor:
    """Cubic B-spline coefficients of ``vol`` (..., Z, Y, X) under periodic boundaries.

    The coefficients ``c`` satisfy ``Σ_k c[k] β³(i - k) = vol[i]`` at every sample ``i``;
    computed in Fourier space by dividing by the transfer function of the sampled spline
    ``2/3 + cos(ω)/3`` along each axis (≥ 1/3, so always well conditioned).
    """
    dims = (-3, -2, -1)
    real = vol.dtype if vol.dtype in (torch.float32, torch.float64) else torch.float32
    f = torch.fft.rfftn(vol.to(real), dim=dims)
    for axis, dim in enumerate(dims):
        n = vol.shape[dim]
        if axis < 2:
            w = 2 * torch.pi * torch.fft.fftfreq(n, device=vol.device, dtype=real)
        else:
            w = 2 * torch.pi * torch.fft.rfftfreq(n, device=vol.device, dtype=real)
        h = 2.0 / 3.0 + torch.cos(w) / 3.0
        shape = [1, 1, 1]
        shape[axis] = h.numel()
        f = f / h.reshape(shape)
    return torch.fft.irfftn(f, s=vol.shape[-3:], dim=dims)


def _sample(coef: Tensor, grid: Tensor, mode: str) -> Tensor:
    """grid_sample of (B, 1, Z, Y, X) at normalised coordinates (B, O, O, O, 3) → (B, O, O, O)."""
    out = F.grid_sample(coef, grid.to(coef.dtype), mode=mode, padding_mode="zeros", align_corners=True)
    return out[:, 0]


def _to_grid(coord: Tensor, n: int) -> Tensor:
    """Index coordinate along an axis of length ``n`` → grid_sample's [-1, 1] (align_corners=True)."""
    return coord * (2.0 / max(n - 1, 1)) - 1.0


def _cubic_sample(coef: Tensor, coords: Tensor) -> Tensor:
    """Cubic B-spline evaluation from coefficients (B, 1, Z, Y, X) at index coordinates
    (B, O, O, O, 3) as (x, y, z), with 8 trilinear fetches."""
    sizes = (coef.shape[-1], coef.shape[-2], coef.shape[-3])  # x, y, z
    pos = []      # per axis: the two fetch positions, normalised
    weight = []   # per axis: their weights
    for axis in range(3):
        u = coords[..., axis]
        i = torch.floor(u)
        t = u - i
        t2 = t * t
        t3 = t2 * t
        w0 = (1 - t) ** 3 / 6
        w1 = (3 * t3 - 6 * t2 + 4) / 6
        w3 = t3 / 6
        g0 = w0 + w1
        g1 = 1.0 - g0
        h0 = i - 1 + w1 / g0
        h1 = i + 1 + w3 / g1
        pos.append((_to_grid(h0, sizes[axis]), _to_grid(h1, sizes[axis])))
        weight.append((g0, g1))
    out = None
    for c in (0, 1):          # z
        for b in (0, 1):      # y
            wzy = weight[2][c] * weight[1][b]
            for a in (0, 1):  # x
                grid = torch.stack([pos[0][a], pos[1][b], pos[2][c]], -1)
                term = (wzy * weight[0][a]) * _sample(coef, grid, "bilinear")
                out = term if out is None else out.add_(term)
    return out


def affine_resample(vol: Tensor, matrix: Tensor, shift: Tensor | None = None,
                    out_size: int | Sequence[int] | None = None, order: int = 3,
                    prefiltered: Tensor | None = None) -> Tensor:
    """Resample a volume on a new grid through an affine map of coordinates ("pull").

    ``out[p] = vol[matrix @ (p - c_out) + c_in + shift]`` where ``p`` and the centres
    ``c = (n // 2)`` per axis are index coordinates as ``(x, y, z)`` vectors.

    vol: (Z, Y, X) or (B, Z, Y, X) real. matrix: (3, 3) or (B, 3, 3), acting on (x, y, z).
    shift: (3,) or (B, 3) in input voxels, (x, y, z). out_size: int or (z, y, x); default the
    input shape. order: 0 nearest, 1 trilinear, 3 cubic B-spline. ``prefiltered`` may pass
    the :func:`spline_prefilter` of ``vol`` when resampling one volume many times.
    Returns (O_z, O_y, O_x), or (B, O_z, O_y, O_x) when ``vol`` or ``matrix`` is batched.
    """
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    batched = vol.dim() == 4 or matrix.dim() == 3 or (shift is not None and shift.dim() == 2)
    v = vol if vol.dim() == 4 else vol[None]
    in_shape = tuple(v.shape[-3:])
    out_shape = _as_size3(out_size) if out_size is not None else in_shape
    real = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
    m = matrix.to(device=v.device, dtype=real)
    m = m if m.dim() == 3 else m[None]
    B = max(v.shape[0], m.shape[0], 1 if shift is None or shift.dim() == 1 else shift.shape[0])

    # output grid offsets (x, y, z) from the output centre, any (possibly non-cubic) shape
    axes = [torch.arange(n, device=v.device, dtype=real) - n // 2 for n in out_shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    p = torch.stack([xx, yy, zz], -1)  # (Oz, Oy, Ox, 3)
    c_in = torch.tensor([in_shape[2] // 2, in_shape[1] // 2, in_shape[0] // 2], device=v.device, dtype=real)
    coords = torch.einsum("bij,zyxj->bzyxi", m, p) + c_in
    if shift is not None:
        s = shift.to(device=v.device, dtype=real)
        s = s if s.dim() == 2 else s[None]
        coords = coords + s[:, None, None, None, :]
    coords = coords.expand(B, *coords.shape[1:])

    if order == 3:
        coef = prefiltered if prefiltered is not None else spline_prefilter(v.to(real))
        coef = coef if coef.dim() == 4 else coef[None]
        # one periodic layer of coefficients: the spline inside the box is the periodic one
        # the prefilter assumed; beyond the border it falls to zero within two voxels
        coef = F.pad(coef.to(real)[:, None], (1, 1, 1, 1, 1, 1), mode="circular")
        coef = coef.expand(B, *coef.shape[1:])
        out = _cubic_sample(coef, coords + 1.0)
    else:
        src = v.to(real).expand(B, *in_shape)[:, None]
        sizes = (in_shape[2], in_shape[1], in_shape[0])
        grid = torch.stack([_to_grid(coords[..., k], sizes[k]) for k in range(3)], -1)
        out = _sample(src, grid, "bilinear" if order == 1 else "nearest")
    return out if batched else out[0]


def rotate(vol: Tensor, R: Tensor, out_size: int | Sequence[int] | None = None, order: int = 3,
           prefiltered: Tensor | None = None) -> Tensor:
    """Rotate volume content about the centre voxel: ``out(p) = vol(Rᵀ p)``.

    vol: (Z, Y, X) or (B, Z, Y, X); R: (3, 3) or (B, 3, 3) rotation matrices on (x, y, z).
    The inverse rotation is ``rotate(out, R.transpose(-1, -2))``.
    """
    return affine_resample(vol, R.transpose(-1, -2), out_size=out_size, order=order, prefiltered=prefiltered)


def center_crop_pad(vol: Tensor, size: int | Sequence[int], value: float = 0.0) -> Tensor:
    """Crop or zero-pad the last three axes about the centre to ``size`` (int or (z, y, x)).

    The voxel at index ``n // 2`` of each input axis lands at index ``m // 2`` of the output,
    so the origin is kept (docs/conventions.md). Padding uses ``value``.
    """
    target = _as_size3(size)
    out = vol
    for dim, m in zip((-3, -2, -1), target):
        n = out.shape[dim]
        if m < n:
            start = n // 2 - m // 2
            out = out.narrow(dim, start, m)
        elif m > n:
            before = m // 2 - n // 2
            after = m - n - before
            pad = [0, 0] * 3
            k = 2 * (-1 - dim)  # F.pad lists the last axis first
            pad[k], pad[k + 1] = before, after
            out = F.pad(out, pad, value=value)
    return out.contiguous()


def random_crop(vol: Tensor, size: int | Sequence[int],
                generator: torch.Generator | None = None) -> tuple[Tensor, tuple[int, int, int]]:
    """A random sub-box of the last three axes. Returns the crop and its start index (z, y, x).

    Each start is uniform over the positions that keep the crop inside the volume.
    """
    target = _as_size3(size)
    shape = tuple(vol.shape[-3:])
    if any(m > n for m, n in zip(target, shape)):
        raise ValueError(f"crop {target} is larger than the volume {shape}")
    start = tuple(int(torch.randint(0, n - m + 1, (1,), generator=generator)) for m, n in zip(target, shape))
    out = vol
    for dim, s, m in zip((-3, -2, -1), start, target):
        out = out.narrow(dim, s, m)
    return out.contiguous(), start  # type: ignore[return-value]


def flip(vol: Tensor, axes: Sequence[int]) -> Tensor:
    """Mirror the volume about its centre voxel along the given axes (0 = z, 1 = y, 2 = x).

    Along a flipped axis of length ``n`` index ``i`` goes to ``(2 (n // 2) - i) mod n``: the
    reflection ``p → -p`` about the origin of docs/conventions.md, so the centre voxel stays
    put (for even ``n`` the first plane, whose mirror lies outside the box, stays in place).
    A flip changes the handedness of the density: an odd number of flips gives the mirror
    image, which is not a physically possible map of the same molecule.
    """
    out = vol
    for a in axes:
        dim = a - 3
        n = out.shape[dim]
        out = torch.flip(out, [dim])
        if n % 2 == 0:
            out = torch.roll(out, 1, dims=dim)
    return out


def random_flip_axes(generator: torch.Generator | None = None, p: float = 0.5) -> tuple[int, ...]:
    """Each of the axes (0, 1, 2) independently with probability ``p``."""
    u = torch.rand(3, generator=generator)
    return tuple(i for i in range(3) if float(u[i]) < p)
