"""Quantisers on hand-made cases: nearest codes, loss values, residual sums, straight-through gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cryovox.models.swan.quantisers import (MultiScaleResidualQuantiser, ResidualQuantiser,
                                            VectorQuantiser, nearest_code)


def _grid(vectors: list[list[float]]) -> torch.Tensor:
    """One vector per batch item on a 1³ grid: (B, C, 1, 1, 1)."""
    return torch.tensor(vectors, dtype=torch.float32)[:, :, None, None, None]


def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g)
    cb = torch.randn(37, 5, generator=g)
    brute = ((x[:, None, :] - cb[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(nearest_code(x, cb, chunk=64), brute)


def test_vq_hand_made_lookup_and_loss():
    q = VectorQuantiser(dim=2, codebook_size=4, beta=0.25)
    q.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = _grid([[0.9, 0.2], [0.1, 0.8]]).requires_grad_()
    out = q(z)
    assert out.indices[0].flatten().tolist() == [1, 2]
    assert torch.allclose(out.z_q.detach().flatten(1), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # squared errors: (0.1², 0.2²) and (0.1², 0.2²) → mean 0.025 for both loss terms
    assert out.codebook_loss.item() == pytest.approx(0.025, abs=1e-7)
    assert out.commit_loss.item() == pytest.approx(0.025, abs=1e-7)
    assert out.loss.item() == pytest.approx(0.025 * 1.25, abs=1e-7)


def test_vq_gradients_straight_through_and_losses():
    q = VectorQuantiser(dim=2, codebook_size=4, beta=0.25)
    q.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = _grid([[0.9, 0.2], [0.1, 0.8]]).requires_grad_()
    w = torch.randn(z.shape)
    out = q(z)
    (out.z_q * w).sum().backward()
    assert torch.allclose(z.grad, w)  # straight-through: identity Jacobian
    assert q.codebook.grad is None or torch.all(q.codebook.grad == 0)

    z.grad = None
    out = q(z)
    out.loss.backward()
    # d/dz of β·mean((z - e)²) over 4 numbers: β · 2 (z - e) / 4
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None, None, None]
    assert torch.allclose(z.grad, 0.25 * 2 * (z.detach() - e) / 4, atol=1e-7)
    # codebook: d/de of mean((e - z)²): rows 1 and 2 get 2 (e - z) / 4; rows 0 and 3 nothing
    expect = torch.zeros(4, 2)
    expect[1] = 2 * (torch.tensor([1.0, 0.0]) - torch.tensor([0.9, 0.2])) / 4
    expect[2] = 2 * (torch.tensor([0.0, 1.0]) - torch.tensor([0.1, 0.8])) / 4
    assert torch.allclose(q.codebook.grad, expect, atol=1e-7)


def test_rq_hand_made_two_depths():
    q = ResidualQuantiser(dim=2, codebook_size=3, depth=2, beta=0.5)
    q.codebook.data = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
    z = _grid([[1.0, 0.4]])
    out = q(z)
    # depth 1: (1, 0.4) → (1, 0) ; residual (0, 0.4) → (0, 0.5)
    assert [i.item() for i in out.indices] == [0, 1]
    assert torch.allclose(out.z_q.flatten(), torch.tensor([1.0, 0.5]))
    # cumulative errors: depth 1 mean(0, 0.16) = 0.08, depth 2 mean(0, 0.01) = 0.005 → 0.0425
    assert out.codebook_loss.item() == pytest.approx(0.0425, abs=1e-7)
    assert out.loss.item() == pytest.approx(0.0425 * 1.5, abs=1e-7)


def test_multiscale_without_phi_hand_made():
    """Scales [1, 2] on a 2³ grid, C = 1, φ off: the first step quantises the box mean."""
    q = MultiScaleResidualQuantiser(dim=1, codebook_size=3, scales=[1, 2], beta=0.25, phi=False)
    q.codebook.data = torch.tensor([[0.0], [1.0], [-0.5]])
    z = torch.tensor([1.2, 0.8, 1.0, 1.0, 0.4, 1.6, 1.0, 1.0]).reshape(1, 1, 2, 2, 2)
    out = q(z)
    assert out.indices[0].flatten().tolist() == [1]  # mean 1.0 → code 1.0
    # residual: [0.2, -0.2, 0, 0, -0.6, 0.6, 0, 0] → codes 0, 0, 0, 0, -0.5, 1, 0, 0 (nearest)
    assert out.indices[1].flatten().tolist() == [0, 0, 0, 0, 2, 1, 0, 0]
    expect = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 2.0, 1.0, 1.0]).reshape(1, 1, 2, 2, 2)
    assert torch.allclose(out.z_q, expect)
    e1 = ((torch.ones(8) - z.flatten()) ** 2).mean()
    e2 = ((expect.flatten() - z.flatten()) ** 2).mean()
    assert out.codebook_loss.item() == pytest.approx(((e1 + e2) / 2).item(), abs=1e-7)


@pytest.mark.parametrize("phi", [False, True])
def test_multiscale_residual_sums(phi):
    """ẑ is the sum of the step contributions and z − ẑ is what is left after the last step."""
    torch.manual_seed(3)
    q = MultiScaleResidualQuantiser(dim=4, codebook_size=16, scales=[1, 2, 3, 4], phi=phi)
    if phi:  # non-trivial φ so that the identity is tested with real convolutions
        for p in q.phis:
            torch.nn.init.normal_(p.conv.weight, std=0.05)
    z = torch.randn(2, 4, 4, 4, 4)
    out = q(z)
    total = sum(out.steps)
    assert torch.allclose(out.z_q, total, atol=1e-5)
    # manual recursion, independent of the module's bookkeeping
    r = z.clone()
    acc = torch.zeros_like(z)
    for k, s in enumerate([1, 2, 3, 4]):
        rs = F.interpolate(r, size=(s,) * 3, mode="area") if s < 4 else r
        rows = rs.permute(0, 2, 3, 4, 1).reshape(-1, 4)
        idx = ((rows[:, None] - q.codebook.detach()[None]) ** 2).sum(-1).argmin(1)
        assert torch.equal(idx, out.indices[k].flatten())
        e = q.codebook.detach()[idx].reshape(2, s, s, s, 4).permute(0, 4, 1, 2, 3)
        h = F.interpolate(e, size=(4,) * 3, mode="trilinear", align_corners=False) if s < 4 else e
        if phi:
            h = q.phis[k](h)
        acc, r = acc + h, r - h
    assert torch.allclose(out.z_q, acc.detach(), atol=1e-5)
    assert torch.allclose(z - out.z_q, r.detach(), atol=1e-5)
    # decoding the indices gives the same approximation
    assert torch.allclose(q.decode_indices(out.indices, 4), out.z_q, atol=1e-5)


def test_multiscale_gradients_reach_codebook_and_phi():
    torch.manual_seed(0)
    q = MultiScaleResidualQuantiser(dim=3, codebook_size=8, scales=[1, 2], phi=True)
    z = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    out = q(z)
    out.loss.backward()
    assert q.codebook.grad.abs().sum() > 0
    assert all(p.conv.weight.grad.abs().sum() > 0 for p in q.phis)
    z.grad = None
    w = torch.randn(z.shape)
    (q(z).z_q * w).sum().backward()
    assert torch.allclose(z.grad, w)


def test_codebook_stats_and_dead_code_reinit():
    q = VectorQuantiser(dim=2, codebook_size=4)
    q.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [9.0, 9.0], [-9.0, 9.0]])
    q.train()
    z = _grid([[0.1, 0.0], [0.0, 0.1], [1.1, 0.0]])
    q(z)
    st = q.stats()
    assert (st.used, st.dead, st.lookups) == (2, 2, 3)
    assert st.usage == pytest.approx(0.5)
    p = torch.tensor([2 / 3, 1 / 3])
    assert st.perplexity == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    n = q.reinit_dead(torch.Generator().manual_seed(0))
    assert n == 2
    inputs = z.flatten(1)
    for row in q.codebook.data[2:]:  # the dead codes now sit on input vectors
        assert torch.isclose(inputs, row[None]).all(1).any()
    assert torch.equal(q.codebook.data[:2], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    q.reset_counts()
    assert q.stats().lookups == 0
