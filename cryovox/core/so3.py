"""Deterministic grids on SO(3) for orientation searches, with a guaranteed covering radius.

A global grid at angular step ``s`` is a product of viewing directions and in-plane angles:

* directions: a spherical Fibonacci lattice with just enough points that every direction on
  the sphere lies within ``r = sqrt(2/3) · s`` of one of them (the covering radius is measured
  exactly from the lattice's spherical Delaunay triangulation, i.e. its convex hull);
* in-plane angles ``psi``: ``n`` equally spaced values, ``Δψ = 360° / n`` with
  ``cos(Δψ / 4) ≥ cos(s / 2) / cos(r / 2)``.

Why every rotation ``R`` is within ``s`` of a grid point: let its direction be ``δ ≤ r`` from
a grid direction ``v'`` and ``Q`` the minimal rotation (angle ``δ``, axis ``v × v'`` ⟂ ``v'``)
taking one to the other. ``R Qᵀ`` has direction ``v'``, so the nearest grid rotation ``G`` with
direction ``v'`` differs from it by a rotation about ``v'`` of angle ``ε ≤ Δψ / 2``. Then
``Gᵀ R`` is the product of two rotations about orthogonal axes, whose angle ``θ`` satisfies
exactly ``cos(θ/2) = cos(δ/2) cos(ε/2) ≥ cos(r/2) cos(Δψ/4) ≥ cos(s/2)``. The split
``r = sqrt(2/3) s``, ``Δψ ≈ 2 s / sqrt(3)`` minimises the number of points, which grows like
``s⁻³`` (about 27 000 at 7.5°, 3 400 at 15°).

Rotations follow docs/conventions.md (RELION's ``Euler_angles2matrix``): the viewing direction
of ``R = euler_to_matrix(rot, tilt, psi)`` is its third row ``Rᵀ ẑ =
(sin tilt cos rot, sin tilt sin rot, cos tilt)``, and rotations with the same direction differ
by ``Rz(Δpsi)`` on the left.

A local grid (:func:`local_grid`) perturbs given rotations by a cubic lattice of rotation
vectors (``exp(ω) R``), which covers a ball of ``extent`` degrees around each at the
requested step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cryovox.core.rotations import euler_to_matrix, rotvec_to_matrix

__all__ = ["fibonacci_sphere", "sphere_covering_radius", "sphere_grid", "so3_grid_euler", "so3_grid",
           "local_offsets", "local_grid"]

_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors ``(n, 3)`` (x, y, z) on the sphere (spherical Fibonacci lattice)."""
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    rho = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * _GOLDEN_ANGLE
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], -1)


def sphere_covering_radius(points: np.ndarray) -> float:
    """Largest angle (radians) from any point of the sphere to the nearest of ``points`` ``(n, 3)``.

    The farthest places are the vertices of the spherical Voronoi diagram, i.e. the
    circumcentres of the Delaunay triangles (the facets of the convex hull).
    """
    from scipy.spatial import ConvexHull

    if len(points) < 4:
        raise ValueError("need at least 4 points")
    hull = ConvexHull(points)
    # facet planes n·x + d = 0 with unit outward normals n: the facet's circumcircle on the
    # sphere is centred on n, at angle arccos(-d) from its vertices. With the origin outside
    # the hull (points in one hemisphere) some -d < 0, i.e. an uncovered cap beyond 90°.
    cos = -hull.equations[:, 3]
    return float(np.max(np.arccos(np.clip(cos, -1.0, 1.0))))


def sphere_grid(radius_deg: float) -> np.ndarray:
    """Fibonacci directions ``(n, 3)`` whose covering radius is at most ``radius_deg`` degrees."""
    r = math.radians(radius_deg)
    if not 0 < r < math.pi / 2:
        raise ValueError("covering radius must lie in (0°, 90°)")
    n = max(8, int(math.ceil(7.3 / (r * r))))     # Fibonacci lattices cover with r ≈ 2.73 / sqrt(n)
    while True:
        pts = fibonacci_sphere(n)
        cov = sphere_covering_radius(pts)
        if cov <= r:
            return pts
        n = max(n + 1, int(math.ceil(n * (cov / r) ** 2)))


def so3_grid_euler(step_deg: float) -> Tensor:
    """Global grid as RELION Euler angles ``(N, 3)`` (rot, tilt, psi) in degrees, float64.

    Ordered direction-major: all ``psi`` of the first direction, then the next direction.
    Every rotation of SO(3) is within ``step_deg`` (geodesic angle) of a grid point.
    """
    if not 0 < step_deg <= 90:
        raise ValueError("angular step must lie in (0°, 90°]")
    r = math.sqrt(2.0 / 3.0) * step_deg
    dirs = sphere_grid(r)
    dpsi = 4.0 * math.degrees(math.acos(math.cos(math.radians(step_deg) / 2) / math.cos(math.radians(r) / 2)))
    n_psi = int(math.ceil(360.0 / dpsi - 1e-9))
    rot = np.degrees(np.arctan2(dirs[:, 1], dirs[:, 0]))
    tilt = np.degrees(np.arccos(np.clip(dirs[:, 2], -1.0, 1.0)))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    angles = np.stack([np.repeat(rot, n_psi), np.repeat(tilt, n_psi), np.tile(psi, len(dirs))], -1)
    return torch.from_numpy(angles)


def so3_grid(step_deg: float, *, dtype=torch.float64, device=None) -> Tensor:
    """Global grid of rotation matrices ``(N, 3, 3)`` (RELION convention) at ``step_deg``; see :func:`so3_grid_euler`."""
    ang = so3_grid_euler(step_deg)
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]).to(dtype=dtype, device=device)


def local_offsets(step_deg: float, extent_deg: float, *, dtype=torch.float64, device=None) -> Tensor:
    """Small rotations ``(K, 3, 3)`` covering a ball of ``extent_deg`` around the identity at ``step_deg``.

    Rotation vectors on a cubic lattice of spacing ``h = 0.95 · 2 s / √3`` (covering radius
    ``0.95 s`` in the rotation-vector space, which is locally isometric to SO(3)), kept within
    ``extent + s`` of the origin. Includes the identity.
    """
    if step_deg <= 0 or extent_deg < 0:
        raise ValueError("step must be positive and extent non-negative")
    s = math.radians(step_deg)
    h = 0.95 * 2.0 * s / math.sqrt(3.0)        # 5 % margin for the curvature of SO(3)
    reach = math.radians(extent_deg) + s
    m = int(math.floor(reach / h))
    k = torch.arange(-m, m + 1, dtype=torch.float64) * h
    w = torch.stack(torch.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3)
    w = w[w.norm(dim=-1) <= reach + 1e-12]
    return rotvec_to_matrix(w).to(dtype=dtype, device=device)


def local_grid(rotations: Tensor, step_deg: float, extent_deg: float) -> Tensor:
    """Local search grids ``(B, K, 3, 3)`` = ``offset @ R`` around each rotation ``(B, 3, 3)`` (or ``(3, 3)``).

    Every rotation within ``extent_deg`` of ``R`` is within about ``step_deg`` of a grid point
    (exact to first order in the angles; the tests check it for extents up to 15°).
    """
    R = rotations if rotations.ndim == 3 else rotations[None]
    E = local_offsets(step_deg, extent_deg, dtype=R.dtype, device=R.device)
    return E[None] @ R[:, None]
