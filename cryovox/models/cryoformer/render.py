"""Real-space projection of a density field along z of the rotated coordinate grid.

The image of a particle with pose ``R`` (RELION's matrix, volume → image coordinates, see
docs/conventions.md) is ``P(x, y) = Σ_z σ(Rᵀ (x, y, z)ᵀ)``: the density is taken at the rotated
image-frame grid (pixel coordinates ``k − D // 2`` on every axis, one sample per pixel along z)
and summed along z. Only grid points inside the ball ``|r| < support`` (pixels) are visited: the
density is zero outside it, whatever the rotation. Two ways to take the density there:

* :func:`project` (``projection="field"``): the field (network) is evaluated at every rotated
  point ``Rᵀ r`` of every particle — exact, the CryoFormer formulation;
* :func:`project_volumes` (``projection="voxel"``): each particle's density is first evaluated on
  the voxel grid (where the z-independent spatial features are shared by the whole batch,
  :func:`evaluate_points`), then sampled at ``Rᵀ r`` by trilinear interpolation (``grid_sample``),
  as a real-space projector of a voxel map does.

Memory stays bounded for any box: points are processed in chunks of at most ``chunk``
(particle × point) evaluations, and, when gradients are needed and a batch does not fit in one
chunk, each chunk runs under activation checkpointing (:func:`recompute`: its activations are
recomputed in the backward pass instead of being kept).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def ball_mask(box: int, support: float, device=None) -> Tensor:
    """``(D, D, D)`` bool ``[z, y, x]``: the grid points closer than ``support`` px to the centre ``D // 2``."""
    k = torch.arange(box, dtype=torch.float32, device=device) - box // 2
    return (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < float(support) ** 2


def grid_coords(box: int, device=None, dtype=torch.float32) -> Tensor:
    """``(D³, 3)`` coordinates ``(x, y, z)`` in px from the centre of the ``[z, y, x]`` grid, raster order."""
    k = torch.arange(box, dtype=dtype, device=device) - box // 2
    zz, yy, xx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack([xx, yy, zz], -1).reshape(-1, 3)


@lru_cache(maxsize=8)
def _ball(box: int, support: float) -> tuple[Tensor, Tensor]:
    inside = ball_mask(box, support).reshape(-1)
    pixel = torch.arange(box ** 3) % (box * box)                       # y·D + x of each [z, y, x] voxel
    return grid_coords(box)[inside].contiguous(), pixel[inside].contiguous()


def ball_points(box: int, support: float, device=None) -> tuple[Tensor, Tensor]:
    """Grid points inside the ball: coordinates ``(P, 3)`` float32 ``(x, y, z)`` in px from the centre,
    in ``[z, y, x]`` raster order, and the flat image pixel ``y·D + x`` ``(P,)`` of each."""
    r, pix = _ball(int(box), float(support))
    return r.to(device), pix.to(device)


class _Recompute(torch.autograd.Function):
    """Activation checkpointing: run ``fn(*inputs)`` without keeping its graph; in the backward, run it
    again with gradients and differentiate. The parameters ``fn`` reads are passed in explicitly, so
    their gradients are returned through autograd as for any other input (no nested ``backward``)."""

    @staticmethod
    def forward(ctx, fn, n_inputs: int, *args: Tensor) -> Tensor:
        ctx.fn, ctx.n = fn, n_inputs
        ctx.save_for_backward(*args)
        with torch.no_grad():
            return fn(*args[:n_inputs])

    @staticmethod
    def backward(ctx, grad: Tensor):
        args = ctx.saved_tensors
        inputs = [a.detach().requires_grad_(a.requires_grad) for a in args[:ctx.n]]
        wrt = [a for a in inputs + list(args[ctx.n:]) if a.requires_grad]
        with torch.enable_grad():
            out = ctx.fn(*inputs)
        grads = iter(torch.autograd.grad(out, wrt, grad, allow_unused=True) if wrt else ())
        full = [next(grads) if a.requires_grad else None for a in inputs + list(args[ctx.n:])]
        return (None, None, *full)


def recompute(fn: Callable[..., Tensor], inputs: Sequence[Tensor], params: Sequence[Tensor] = ()) -> Tensor:
    """``fn(*inputs)`` under activation checkpointing; ``params``: the parameters ``fn`` uses (they get
    their gradients). Deterministic functions only (the backward runs ``fn`` again)."""
    return _Recompute.apply(fn, len(inputs), *inputs, *[p for p in params if p.requires_grad])


def _chunks(n: int, per: int):
    for s in range(0, n, per):
        yield s, min(n, s + per)


def project(field: Callable[[Tensor, object], Tensor], cond, rot: Tensor, box: int, support: float, *,
            chunk: int = 262144, checkpointing: bool | None = None, params: Sequence[Tensor] = ()) -> Tensor:
    """Projections ``(B, D, D)`` ``[y, x]`` of a field evaluated at the rotated points (``projection="field"``).

    field: ``(coords (B, n, 3) in px, cond) → (B, n)`` densities, where ``cond`` is the per-particle
    conditioning (a tensor or tuple of tensors with batch dimension B, passed through unchanged);
    rot: ``(B, 3, 3)``; chunk: at most this many (particle × point) evaluations at once;
    checkpointing: recompute activations in the backward (default: when gradients are enabled and
    the batch needs more than one chunk); params: the parameters the field uses (needed with
    checkpointing).
    """
    B = rot.shape[0]
    r, pix = ball_points(box, support, rot.device)
    r = r.to(rot.dtype)
    per = max(1, int(chunk) // max(1, B))
    if checkpointing is None:
        checkpointing = torch.is_grad_enabled() and per < r.shape[0]
    conds = cond if isinstance(cond, tuple) else (cond,)

    def run(rot_, r_, *c):
        return field(r_[None] @ rot_, c if isinstance(cond, tuple) else c[0])   # rows of Rᵀ r: (B, n, 3)

    image = rot.new_zeros(B, box * box)
    for s, e in _chunks(r.shape[0], per):
        dens = recompute(run, (rot, r[s:e], *conds), params) if checkpointing else run(rot, r[s:e], *conds)
        image = image.index_add(1, pix[s:e], dens.to(image.dtype))
    return image.view(B, box, box)


def evaluate_points(density: Callable[[Tensor, object], Tensor], cond, coords: Tensor, *,
                    batch: int, chunk: int = 262144, checkpointing: bool | None = None,
                    params: Sequence[Tensor] = ()) -> Tensor:
    """Densities ``(B, n)`` of each particle at the same points ``coords`` ``(n, 3)`` (px).

    density: ``(coords (m, 3), cond) → (B, m)`` (the spatial features of the points are computed once
    for the batch); batch: ``B``; chunk/checkpointing/params as in :func:`project`.
    """
    per = max(1, int(chunk) // max(1, batch))
    if checkpointing is None:
        checkpointing = torch.is_grad_enabled() and per < coords.shape[0]
    conds = cond if isinstance(cond, tuple) else (cond,)

    def run(x, *c):
        return density(x, c if isinstance(cond, tuple) else c[0])

    parts = []
    for s, e in _chunks(coords.shape[0], per):
        parts.append(recompute(run, (coords[s:e], *conds), params) if checkpointing else run(coords[s:e], *conds))
    return torch.cat(parts, 1)


def project_volumes(volumes: Tensor, rot: Tensor, support: float, *, chunk: int = 1 << 22) -> Tensor:
    """Projections ``(B, D, D)`` of voxel maps ``(B, D, D, D)`` ``[z, y, x]`` at poses ``rot`` ``(B, 3, 3)``
    (``projection="voxel"``): trilinear samples at ``Rᵀ r`` for the ball's image-frame points ``r``,
    summed along z. Differentiable in the maps and in ``rot``; ``chunk`` bounds the samples per call."""
    B, D = volumes.shape[0], volumes.shape[-1]
    r, pix = ball_points(D, support, volumes.device)
    r = r.to(volumes.dtype)
    rot = rot.to(volumes.dtype)
    per = max(1, int(chunk) // max(1, B))
    vol = volumes[:, None]
    image = volumes.new_zeros(B, D * D)
    for s, e in _chunks(r.shape[0], per):
        x = r[s:e][None] @ rot                                         # (B, n, 3) volume coordinates, px
        g = (x + D // 2) * (2.0 / (D - 1)) - 1.0                       # grid_sample's [-1, 1], align_corners=True
        val = F.grid_sample(vol, g[:, None, None], mode="bilinear", padding_mode="zeros", align_corners=True)
        image = image.index_add(1, pix[s:e], val.reshape(B, -1))
    return image.view(B, D, D)


def evaluate_grid(field: Callable[[Tensor, object], Tensor], cond, box: int, mask: Tensor, *,
                  chunk: int = 262144, dtype=torch.float32, per_particle: int = 1) -> Tensor:
    """A field on the ``(D, D, D)`` grid ``[z, y, x]`` (zero outside ``mask``) for each of the B particles of
    ``cond``: ``(B, D, D, D)``, or ``(B, k, D, D, D)`` for a field that returns ``k = per_particle`` values
    per particle and point (as ``(B·k, n)``). field: ``(coords (m, 3) px, cond) → (B·k, m)``. No gradients."""
    conds = cond if isinstance(cond, tuple) else (cond,)
    B = conds[0].shape[0]
    inside = mask.reshape(-1).nonzero().reshape(-1)
    coords = grid_coords(box, mask.device, dtype)[inside]
    out = torch.zeros(B * per_particle, box ** 3, dtype=dtype, device=mask.device)
    per = max(1, int(chunk) // max(1, B * per_particle))
    with torch.no_grad():
        for s, e in _chunks(coords.shape[0], per):
            out[:, inside[s:e]] = field(coords[s:e], cond).to(dtype)
    shape = (B, box, box, box) if per_particle == 1 else (B, per_particle, box, box, box)
    return out.view(shape)
