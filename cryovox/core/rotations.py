"""Rotations in RELION's convention (see docs/conventions.md).

``R = euler_to_matrix(rot, tilt, psi)`` is RELION's ``Euler_angles2matrix``: it maps volume
coordinates to image coordinates, ``R = Rz(psi) · Ry(tilt) · Rz(rot)`` with RELION's passive
rotation matrices, which equals scipy's ``Rotation.from_euler("ZYZ", [rot, tilt, psi]).as_matrix().T``.
Angles are in degrees (as in STAR files); matrices act on column vectors ``(x, y, z)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _rz(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    z, o = torch.zeros_like(a), torch.ones_like(a)
    # passive rotation about z (RELION): [[c, s, 0], [-s, c, 0], [0, 0, 1]]
    return torch.stack([torch.stack([c, s, z], -1), torch.stack([-s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def _ry(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    z, o = torch.zeros_like(a), torch.ones_like(a)
    # passive rotation about y (RELION): [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    return torch.stack([torch.stack([c, z, -s], -1), torch.stack([z, o, z], -1), torch.stack([s, z, c], -1)], -2)


def euler_to_matrix(rot, tilt, psi) -> Tensor:
    """RELION ZYZ Euler angles in degrees (broadcastable tensors) → ``(..., 3, 3)`` matrices."""
    rot, tilt, psi = (torch.as_tensor(a, dtype=torch.float64) for a in (rot, tilt, psi))
    rot, tilt, psi = torch.broadcast_tensors(rot, tilt, psi)
    d = math.pi / 180.0
    return _rz(psi * d) @ _ry(tilt * d) @ _rz(rot * d)


def matrix_to_euler(R: Tensor) -> Tensor:
    """Inverse of :func:`euler_to_matrix`: ``(..., 3, 3)`` → ``(..., 3)`` (rot, tilt, psi) in degrees.

    tilt in [0, 180]; at tilt = 0 or 180 the split between rot and psi is arbitrary and psi = 0.
    """
    R = torch.as_tensor(R, dtype=torch.float64)
    # From R = Rz(psi) Ry(tilt) Rz(rot): R[2,2] = cos tilt; R[2,0] = s_t c_rot; R[2,1] = s_t s_rot;
    # R[0,2] = -c_psi s_t; R[1,2] = s_psi s_t.
    cos_t = R[..., 2, 2].clamp(-1.0, 1.0)
    sin_t = torch.sqrt(R[..., 2, 0] ** 2 + R[..., 2, 1] ** 2)
    tilt = torch.atan2(sin_t, cos_t)
    regular = sin_t > 1e-9
    # At the poles only psi + rot (tilt 0: R = Rz(psi + rot)) or psi - rot (tilt 180:
    # R[0,0] = -cos(psi - rot), R[1,0] = sin(psi - rot)) is defined: put it all in rot, psi = 0.
    pole_rot = torch.where(cos_t > 0, torch.atan2(-R[..., 1, 0], R[..., 0, 0]),
                           torch.atan2(-R[..., 1, 0], -R[..., 0, 0]))
    rot = torch.where(regular, torch.atan2(R[..., 2, 1], R[..., 2, 0]), pole_rot)
    psi = torch.where(regular, torch.atan2(R[..., 1, 2], -R[..., 0, 2]), torch.zeros_like(rot))
    return torch.stack([rot, tilt, psi], -1) * (180.0 / math.pi)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` as (w, x, y, z) → active rotation matrices ``(..., 3, 3)``."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """``n`` rotation matrices drawn uniformly (Haar measure) from SO(3): normalised Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return quaternion_to_matrix(q).to(dtype)


def rotvec_to_matrix(v: Tensor) -> Tensor:
    """Rotation vectors ``(..., 3)`` (axis × angle in radians) → active matrices (Rodrigues)."""
    v = torch.as_tensor(v, dtype=torch.float64)
    theta = v.norm(dim=-1, keepdim=True)
    axis = torch.where(theta > 1e-12, v / theta.clamp_min(1e-300), torch.zeros_like(v))
    half = theta / 2
    q = torch.cat([torch.cos(half), axis * torch.sin(half)], -1)
    return quaternion_to_matrix(q)


def geodesic_distance(R1: Tensor, R2: Tensor) -> Tensor:
    """Angle in degrees of ``R1ᵀ R2`` (..., broadcast)."""
    tr = (R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0)))


def project_to_so3(M: Tensor) -> Tensor:
    """The rotation nearest to each matrix ``(..., 3, 3)`` in the Frobenius norm (``U diag(1, 1, ±1) Vᵀ`` of its
    SVD, the sign making the determinant +1): e.g. the mean of rotations, averaged as matrices."""
    u, _, vt = torch.linalg.svd(M)
    d = torch.ones(M.shape[:-1], dtype=M.dtype, device=M.device)
    d[..., -1] = torch.sign(torch.linalg.det(u @ vt))
    return (u * d[..., None, :]) @ vt
