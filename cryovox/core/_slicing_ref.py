"""Pure-PyTorch reference for Fourier-slice projection and backprojection.

This is the oracle the compiled kernels (``csrc/``) are tested against, and the fallback
when the extension is missing. It is written with plain differentiable torch ops (gather,
index_add), so autograd gives every gradient (basis, coefficients, bias, rotations).
See :mod:`cryovox.core.slicing` for the storage layout and conventions.

Sampling rule (shared bit for bit with the kernels): image pixel ``(kx, ky)`` (``kx >= 0``,
``kx² + ky² <= radius²``) samples the half volume at ``p = pad · Rᵀ (kx, ky, 0)ᵀ``; if
``p.x < 0`` it samples ``conj(V(-p))`` instead (Friedel). Trilinear weights over the 8
neighbours ``floor(p) + {0, 1}³``; neighbours outside the stored grid count as zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

# elements of the largest temporary (K × images × pixels × 8 corners) built at once
_CHUNK_ELEMENTS = 1 << 23


def image_pixels(size: int, radius: float, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """The half-image pixels inside ``radius``.

    Returns ``(index, kx, ky)``: flat indices ``(N,)`` into a ``(size, size // 2 + 1)`` image
    and their integer frequencies (int64), in row-major order.
    """
    half = size // 2 + 1
    ky = torch.arange(size, device=device) - size // 2
    kx = torch.arange(half, device=device)
    KY, KX = torch.meshgrid(ky, kx, indexing="ij")
    inside = (KX * KX + KY * KY).to(torch.float64) <= float(radius) ** 2
    index = torch.nonzero(inside.flatten()).flatten()
    return index, KX.flatten()[index], KY.flatten()[index]


def _corners(rot: Tensor, kx: Tensor, ky: Tensor, vol_size: int, pad: int):
    """Trilinear corners of the sampled points.

    rot: (B, 3, 3) real; kx, ky: (N,) integer frequencies of the image pixels.
    Returns ``flat`` (B, N, 8) int64 indices into the flattened half volume (0 where invalid),
    ``w`` (B, N, 8) weights (0 where the corner is outside the grid; differentiable in rot),
    ``flip`` (B, N) bool: the Friedel mate was sampled (take the complex conjugate).
    """
    dt = rot.dtype
    half = vol_size // 2 + 1
    kxf, kyf = kx.to(dt), ky.to(dt)
    # p = pad · Rᵀ (kx, ky, 0): p_j = pad (R[0, j] kx + R[1, j] ky), ordered (x, y, z)
    p = pad * (rot[:, None, 0, :] * kxf[None, :, None] + rot[:, None, 1, :] * kyf[None, :, None])
    flip = p[..., 0] < 0
    p = torch.where(flip[..., None], -p, p)
    p0 = torch.floor(p.detach())
    f = p - p0  # fractional parts, differentiable in rot
    i0 = p0.to(torch.int64)
    i0 = i0 + torch.tensor([0, vol_size // 2, vol_size // 2], device=rot.device)  # array indices (x, y, z)
    offs = torch.tensor([[dx, dy, dz] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)],
                        device=rot.device)  # (8, 3) in (x, y, z); corner c = 4 dz + 2 dy + dx
    idx = i0[:, :, None, :] + offs  # (B, N, 8, 3)
    hi = torch.tensor([half, vol_size, vol_size], device=rot.device)
    valid = ((idx >= 0) & (idx < hi)).all(-1)
    flat = (idx[..., 2] * vol_size + idx[..., 1]) * half + idx[..., 0]
    flat = torch.where(valid, flat, torch.zeros_like(flat))
    o = offs.to(dt)
    wc = torch.where(o.bool(), f[:, :, None, :], 1 - f[:, :, None, :])  # (B, N, 8, 3)
    w = wc[..., 0] * wc[..., 1] * wc[..., 2]
    w = torch.where(valid, w, torch.zeros_like(w))
    return flat, w, flip


def _chunks(batch: int, per_item: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, per_item))
    for start in range(0, batch, step):
        yield slice(start, min(batch, start + step))


def project_ref(basis: Tensor | None, coeffs: Tensor | None, bias: Tensor | None, rot: Tensor,
                radius: float, pad: int) -> Tensor:
    """Reference :func:`cryovox.core.slicing.project` (arguments already checked)."""
    vol = basis if basis is not None else bias
    vol_size = vol.shape[-3]
    size = vol_size // pad
    B = rot.shape[0]
    rot = rot.to(vol.real.dtype)
    index, kx, ky = image_pixels(size, radius, vol.device)
    N = index.numel()
    parts = []
    K = basis.shape[0] if basis is not None else 0
    flat_basis = basis.reshape(K, -1) if basis is not None else None
    flat_bias = bias.reshape(-1) if bias is not None else None
    for sl in _chunks(B, N * 8 * max(K, 1)):
        flat, w, flip = _corners(rot[sl], kx, ky, vol_size, pad)
        val = torch.zeros(flat.shape[:2], dtype=vol.dtype, device=vol.device)
        if basis is not None:
            g = flat_basis[:, flat]  # (K, b, N, 8)
            mixed = torch.einsum("kbnc,bk->bnc", g, coeffs[sl].to(vol.dtype))
            val = val + (mixed * w).sum(-1)
        if bias is not None:
            val = val + (flat_bias[flat] * w).sum(-1)
        parts.append(torch.where(flip, val.conj(), val))
    vals = torch.cat(parts, 0) if parts else torch.zeros(0, N, dtype=vol.dtype, device=vol.device)
    out = torch.zeros(B, size * (size // 2 + 1), dtype=vol.dtype, device=vol.device)
    out = out.index_copy(1, index, vals)
    return out.reshape(B, size, size // 2 + 1)


def backproject_ref(images: Tensor, rot: Tensor, weights: Tensor | None, radius: float,
                    pad: int) -> tuple[Tensor, Tensor]:
    """Reference :func:`cryovox.core.slicing.backproject` (arguments already checked)."""
    B, size = images.shape[0], images.shape[-2]
    vol_size = size * pad
    half = vol_size // 2 + 1
    rot = rot.to(images.real.dtype)
    index, kx, ky = image_pixels(size, radius, images.device)
    N = index.numel()
    imgs = images.reshape(B, -1)[:, index]
    if weights is None:  # unit weight per pixel: the weight volume counts samples
        wts = torch.ones(B, N, dtype=images.real.dtype, device=images.device)
    else:
        wts = weights.reshape(B, -1)[:, index].to(images.real.dtype)
    data = torch.zeros(vol_size * vol_size * half, dtype=images.dtype, device=images.device)
    weight = torch.zeros(vol_size * vol_size * half, dtype=images.real.dtype, device=images.device)
    for sl in _chunks(B, N * 8):
        flat, w, flip = _corners(rot[sl], kx, ky, vol_size, pad)
        v = imgs[sl]
        v = torch.where(flip, v.conj(), v)
        data = data.index_add(0, flat.flatten(), (v[..., None] * w).flatten())
        weight = weight.index_add(0, flat.flatten(), (wts[sl][..., None] * w).flatten())
    shape = (vol_size, vol_size, half)
    return data.reshape(shape), weight.reshape(shape)
