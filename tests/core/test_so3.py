"""SO(3) grids: measured coverage against random rotations, point counts, RELION convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryovox.core.rotations import euler_to_matrix, random_rotations, rotvec_to_matrix
from cryovox.core.so3 import (fibonacci_sphere, local_grid, local_offsets, so3_grid, so3_grid_euler,
                              sphere_covering_radius, sphere_grid)


def nearest_angle_deg(R: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) from each R (n, 3, 3) to its nearest grid rotation: tr(AᵀB) = Σ A∘B."""
    tr = R.reshape(-1, 9) @ grid.reshape(-1, 9).T
    return torch.rad2deg(torch.arccos(((tr.max(1).values - 1) / 2).clamp(-1, 1)))


@pytest.mark.parametrize("step", [30.0, 20.0])
def test_global_grid_covers_so3(step):
    grid = so3_grid(step)
    R = random_rotations(5000, torch.Generator().manual_seed(int(step)))
    d = nearest_angle_deg(R, grid)
    assert d.max() <= step
    assert d.max() > 0.6 * step          # not needlessly dense: the bound is nearly reached
    # valid rotations
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(grid.transpose(-1, -2) @ grid, eye.expand_as(grid), atol=1e-12, rtol=0)
    assert torch.allclose(torch.linalg.det(grid), torch.ones(len(grid), dtype=torch.float64))


def test_grid_size_scales_as_inverse_cube():
    n20, n10 = len(so3_grid_euler(20.0)), len(so3_grid_euler(10.0))
    assert 6.0 < n10 / n20 < 10.0
    # fewer points than a naive uniform Euler grid at the same step (rot × tilt × psi)
    assert n10 < (360 / 10) * (180 / 10) * (360 / 10)


def test_grid_euler_angles_are_relion_directions():
    ang = so3_grid_euler(30.0)
    R = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    rot, tilt = torch.deg2rad(ang[:, 0]), torch.deg2rad(ang[:, 1])
    direction = torch.stack([torch.sin(tilt) * torch.cos(rot), torch.sin(tilt) * torch.sin(rot), torch.cos(tilt)], -1)
    torch.testing.assert_close(R[:, 2, :], direction, atol=1e-12, rtol=0)   # third row = viewing direction
    torch.testing.assert_close(so3_grid(30.0), R)


def test_sphere_covering_radius_against_sampling():
    pts = fibonacci_sphere(300)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1), 1.0)
    cov = sphere_covering_radius(pts)
    probe = np.random.default_rng(0).standard_normal((100000, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    sampled = np.arccos(np.clip((probe @ pts.T).max(1), -1, 1)).max()
    assert sampled <= cov + 1e-12 and sampled > 0.9 * cov
    # a hemisphere leaves the other side uncovered by more than 90°
    assert sphere_covering_radius(pts[pts[:, 2] > 0]) > math.pi / 2
    assert sphere_covering_radius(sphere_grid(12.0)) <= math.radians(12.0)


@pytest.mark.parametrize("step,extent", [(2.0, 10.0), (4.0, 15.0)])
def test_local_grid_covers_ball(step, extent):
    g = torch.Generator().manual_seed(5)
    R0 = random_rotations(2, g)
    grids = local_grid(R0, step, extent)
    assert grids.shape[0] == 2 and grids.shape[1] == len(local_offsets(step, extent))
    v = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True) * torch.rand(4000, 1, generator=g, dtype=torch.float64) ** (1 / 3) * math.radians(extent)
    for b in range(2):
        targets = rotvec_to_matrix(v) @ R0[b]
        assert nearest_angle_deg(targets, grids[b]).max() <= step
        # and the grid stays near R0 (within extent + step)
        far = nearest_angle_deg(grids[b], R0[b:b + 1])
        assert far.max() <= extent + step + 1e-9 and far.min() < 1e-5       # includes R0 itself
