"""RELION rotations against RELION's explicit Euler_angles2matrix formula and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

from cryovox.core.rotations import (euler_to_matrix, geodesic_distance, matrix_to_euler, quaternion_to_matrix,
                                    project_to_so3, random_rotations, rotvec_to_matrix)


def relion_matrix(rot, tilt, psi):
    """RELION's Euler_angles2matrix (euler.cpp), element by element, angles in degrees."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


ANGLES = np.random.default_rng(0).uniform([-180, 0, -180], [180, 180, 180], size=(50, 3))


def test_euler_to_matrix_is_relions_and_scipys():
    got = euler_to_matrix(torch.tensor(ANGLES[:, 0]), torch.tensor(ANGLES[:, 1]), torch.tensor(ANGLES[:, 2])).numpy()
    want = np.stack([relion_matrix(*a) for a in ANGLES])
    np.testing.assert_allclose(got, want, atol=1e-12)
    scipy_t = Rotation.from_euler("ZYZ", ANGLES, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(got, scipy_t, atol=1e-12)
    # scalars broadcast
    assert euler_to_matrix(10.0, 20.0, 30.0).shape == (3, 3)


@pytest.mark.parametrize("special", [(40.0, 0.0, 0.0), (40.0, 180.0, 0.0),
                                     (-100.0, 0.0, 25.0), (30.0, 180.0, 70.0)])
def test_matrix_to_euler_round_trip(special):
    R = euler_to_matrix(torch.tensor(ANGLES[:, 0]), torch.tensor(ANGLES[:, 1]), torch.tensor(ANGLES[:, 2]))
    ang = matrix_to_euler(R)
    torch.testing.assert_close(euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]), R, atol=1e-10, rtol=0)
    torch.testing.assert_close(ang[:, 1], torch.tensor(ANGLES[:, 1]), atol=1e-9, rtol=0)   # tilt in [0, 180]
    Rs = euler_to_matrix(*special)
    back = matrix_to_euler(Rs)
    torch.testing.assert_close(euler_to_matrix(back[0], back[1], back[2]), Rs, atol=1e-10, rtol=0)


def test_quaternion_and_rotvec_match_scipy():
    g = np.random.default_rng(1)
    q = g.standard_normal((20, 4))
    want = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()          # scipy is (x, y, z, w)
    np.testing.assert_allclose(quaternion_to_matrix(torch.tensor(q)).numpy(), want, atol=1e-12)
    v = g.standard_normal((20, 3)) * 1.5
    v[0] = 0.0
    np.testing.assert_allclose(rotvec_to_matrix(torch.tensor(v)).numpy(), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)


def test_geodesic_distance_matches_scipy():
    R1 = Rotation.random(30, random_state=2)
    R2 = Rotation.random(30, random_state=3)
    want = np.degrees((R1.inv() * R2).magnitude())
    got = geodesic_distance(torch.tensor(R1.as_matrix()), torch.tensor(R2.as_matrix())).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_random_rotations_are_haar_uniform():
    R = random_rotations(20000, torch.Generator().manual_seed(0))
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye.expand_as(R), atol=1e-12, rtol=0)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64))
    assert R.mean(0).abs().max() < 0.03                                # E[R] = 0 under the Haar measure
    tr = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert (tr ** 2).mean().item() == pytest.approx(1.0, abs=0.05)     # E[tr(R)²] = 1
    angle = torch.arccos(((tr - 1) / 2).clamp(-1, 1)).numpy()           # density (1 - cos θ)/π
    assert stats.kstest(angle, lambda t: (t - np.sin(t)) / math.pi).pvalue > 0.01
    a = random_rotations(5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, random_rotations(5, torch.Generator().manual_seed(7)))
    assert random_rotations(3, dtype=torch.float32).dtype == torch.float32


def test_project_to_so3_returns_the_nearest_rotation():
    """A rotation is its own projection; a scaled, slightly perturbed rotation projects back near it; a reflection
    (det −1) projects onto a proper rotation; the mean of two rotations about one axis is the half-way turn."""
    g = torch.Generator().manual_seed(3)
    R = random_rotations(5, generator=g)
    assert torch.allclose(project_to_so3(R), R, atol=1e-12)
    noisy = 2.0 * R + 1e-3 * torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    P = project_to_so3(noisy)
    assert torch.allclose(P.transpose(-1, -2) @ P, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    assert float(geodesic_distance(P, R).max()) < 0.1
    assert torch.allclose(torch.linalg.det(project_to_so3(-R)), torch.ones(5, dtype=torch.float64))
    a, b = rotvec_to_matrix(torch.tensor([[0.0, 0.0, 0.2]], dtype=torch.float64)), \
        rotvec_to_matrix(torch.tensor([[0.0, 0.0, 0.6]], dtype=torch.float64))
    mid = rotvec_to_matrix(torch.tensor([[0.0, 0.0, 0.4]], dtype=torch.float64))
    assert torch.allclose(project_to_so3((a + b) / 2), mid, atol=1e-12)
